-- Argo CD health check for sfm.nhn.no/MigrationDatabase.
-- Healthy once the database is operational (condition Operational=True); Degraded when the operator
-- reports a failure (phase Failed, or Ready=False for a reason other than provisioning); otherwise
-- Progressing (provisioning, staging, migrating, validated, waiting for activation or approval).
local hs = {}
local function condition(status, type)
  if status.conditions == nil then return nil end
  for _, c in ipairs(status.conditions) do
    if c.type == type then return c end
  end
  return nil
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the sfm-operator to pick up the MigrationDatabase"
  return hs
end
local phase = status.phase or "Pending"
local reason = status.phaseReason or ""
if obj.metadata ~= nil and obj.metadata.generation ~= nil and status.observedGeneration ~= nil
    and status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the sfm-operator to observe generation " .. obj.metadata.generation
  return hs
end

local operational = condition(status, "Operational")
if operational ~= nil and operational.status == "True" then
  hs.status = "Healthy"
  hs.message = "Operational: " .. (operational.message or "")
  return hs
end

local ready = condition(status, "Ready")
if phase == "Failed" then
  hs.status = "Degraded"
  local message = reason
  if ready ~= nil and ready.message ~= nil then message = reason .. ": " .. ready.message end
  hs.message = "Failed: " .. message
  return hs
end
if ready ~= nil and ready.status == "False" and ready.reason ~= "Provisioning" and ready.reason ~= "Pending" and ready.reason ~= "Deleting" then
  hs.status = "Degraded"
  hs.message = (ready.reason or "") .. ": " .. (ready.message or "")
  return hs
end

hs.status = "Progressing"
if reason == "AwaitingManualApproval" then
  hs.message = "Validated; waiting for an NHN operator to set spec.activation.approvedDigest"
elseif reason ~= "" then
  hs.message = phase .. " (" .. reason .. ")"
else
  hs.message = phase
end
return hs
