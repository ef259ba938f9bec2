-- Argo CD health of Protégé's Specialist and SpecialistPool, read from their kstatus conditions.
-- The same script serves both kinds: in argocd-cm, set it under
--   resource.customizations.health.protege.dev_Specialist
--   resource.customizations.health.protege.dev_SpecialistPool
-- (docs/operator.md, "GitOps health"). Argo CD runs it with gopher-lua (Lua 5.1).
local hs = { status = "Progressing", message = "waiting for the operator to report a status" }
if obj.status == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "waiting for the operator to observe generation " .. generation
  return hs
end
local conditions = {}
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    conditions[condition.type] = condition
  end
end
local function held(type)
  local condition = conditions[type]
  if condition ~= nil and condition.status == "True" then
    return condition
  end
  return nil
end
local function says(condition)
  if condition == nil then
    return ""
  end
  return condition.reason .. ": " .. (condition.message or "")
end
local stalled = held("Stalled")
if stalled ~= nil then
  hs.status = "Degraded"
  hs.message = says(stalled)
  return hs
end
if obj.status.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true: no training and no rollout; serving stays as it is"
  return hs
end
if obj.status.phase == "Degraded" then -- a pool with replicas down; KubeRay is recovering them
  hs.status = "Degraded"
  hs.message = says(conditions.Ready)
  return hs
end
local reconciling = held("Reconciling")
if reconciling ~= nil then
  hs.message = says(reconciling)
  return hs
end
-- Current: a serving Specialist, a ready pool, or a Specialist waiting for its task's traffic
-- (collecting data can take days; Progressing would hold sync waves that long).
hs.status = "Healthy"
hs.message = says(conditions.Ready)
return hs
