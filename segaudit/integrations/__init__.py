"""Gates and captures for real federated frameworks: :mod:`segaudit.integrations.flower` (Flower client mods,
extra ``flower``) and :mod:`segaudit.integrations.nvflare` (an NVFlare task-result filter, extra ``nvflare``).
Neither framework is imported until its module is."""
