# syntax=docker/dockerfile:1
# Images of the SFM migration platform, one stage per binary, from one build:
#   docker build --target operator      -t sfm-operator:dev .
#   docker build --target migration-api -t sfm-migration-api:dev .
#   docker build --target client        -t sfm-migrate:dev .      (sfm-migrate and sfm-export)
# The runtime is distroless (glibc and libgcc only, no shell, no package manager) and runs as the
# nonroot user 65532; the migration API also gets the shared libraries it links beyond those (Debian's
# libxml2, which validates against NHN's XSD, and what libxml2 links: ICU, zlib, liblzma), copied from
# the build stage into the real (merged-/usr) directory of the path ldd resolves. User 65532 is what
# the chart's securityContext expects (runAsNonRoot, read-only root filesystem). hack/kind-e2e.sh builds the first two and loads them into kind. Not built in CI here
# (no Docker engine on these machines).

ARG RUST_VERSION=1.89
ARG DISTROLESS=gcr.io/distroless/cc-debian12:nonroot

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# aws-lc-rs (the one crypto provider) builds its C library with cmake; the migration API links
# Debian's libxml2 (libxml2-dev: the library to link against).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libxml2-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY docs/openapi.yaml docs/openapi.yaml
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features --bins \
 && mkdir -p /out \
 && cp target/release/sfm-operator target/release/sfm-migration-api \
       target/release/sfm-migrate target/release/sfm-export /out/ \
 && mkdir -p /out/api-libs \
 && for lib in $(ldd /out/sfm-migration-api | awk '/=> \// {print $3}' | grep -E '/lib(xml2|icu[a-z]*|z|lzma)\.so'); do \
      dir=$(readlink -f "$(dirname "$lib")"); mkdir -p "/out/api-libs$dir"; cp -L "$lib" "/out/api-libs$dir/"; \
    done \
 && test -n "$(ls -A /out/api-libs)"

FROM ${DISTROLESS} AS operator
COPY --from=build /out/sfm-operator /usr/local/bin/sfm-operator
USER 65532:65532
ENV SFM_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/sfm-operator"]
CMD ["run"]

FROM ${DISTROLESS} AS migration-api
COPY --from=build /out/api-libs/ /
COPY --from=build /out/sfm-migration-api /usr/local/bin/sfm-migration-api
USER 65532:65532
ENV SFM_LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sfm-migration-api"]
CMD ["serve"]

FROM ${DISTROLESS} AS client
COPY --from=build /out/sfm-migrate /out/sfm-export /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sfm-migrate"]
