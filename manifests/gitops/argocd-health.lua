-- Argo CD health of every Mahler kind (Project, Environment, Service,
-- Connection, ResourceTemplate), read from the kstatus conditions the
-- operator writes: Ready, Reconciling, Stalled, each with the generation it
-- describes. Uses only what Argo CD opens by default (base and table).
local hs = {}
if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Deleting"
  return hs
end
local generation = obj.metadata.generation
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Mahler operator to report status"
  return hs
end
local ready, stalled
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then
    ready = c
  elseif c.type == "Stalled" then
    stalled = c
  end
end
local observed = obj.status.observedGeneration
if ready == nil or (generation ~= nil and (observed == nil or observed < generation)) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Mahler operator to observe generation " .. tostring(generation)
  return hs
end
local function says(c)
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = says(stalled)
elseif ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or ""
elseif ready.reason == "AwaitingApproval" then
  -- A Terraform plan waits for an owner: a person must act, as for a
  -- suspended rollout.
  hs.status = "Suspended"
  hs.message = says(ready)
else
  hs.status = "Progressing"
  hs.message = says(ready)
end
return hs
