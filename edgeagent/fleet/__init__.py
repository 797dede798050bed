"""Fleet features that need no server of ours: everything lives in retained MQTT messages.

- rollout_doc: the retained rollout document per group, and membership (pure; shared by the
  device and the controller)
- tally: what the controller concludes from the devices' results (pure)
- controller: the publisher-side orchestrator of a phased rollout
- view: the fleet table from retained status and recent telemetry
"""
