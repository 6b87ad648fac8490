-- Argo CD health check for sfm.nhn.no/MigrationKey.
-- Healthy while the key is Active and once it has ended on purpose (Superseded by a newer key, Expired
-- at its time to live or when the database went operational, Revoked); Progressing while the key waits
-- for its MigrationDatabase or for the operator; Degraded if the operator reports a phase it does not
-- know (a newer operator than this check).
local hs = {}
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the sfm-operator to issue the key"
  return hs
end
local phase = status.phase
local message = status.message or ""
if phase == "Active" then
  hs.status = "Healthy"
  hs.message = "Active key " .. (status.keyId or "") .. " in Secret " .. (status.secretName or "")
elseif phase == "Pending" then
  hs.status = "Progressing"
  hs.message = "Pending: " .. message
elseif phase == "Superseded" or phase == "Expired" or phase == "Revoked" then
  hs.status = "Healthy"
  hs.message = phase .. ": " .. message
else
  hs.status = "Degraded"
  hs.message = "Unknown phase " .. phase .. ": " .. message
end
return hs
