"""Shared infrastructure for adapters (MQTT client set-up, ...): no domain rules, no vendor formats.

Adapters may import ``smartpark.infra`` besides ports and core; an adapter lifted into its own distribution
takes ``smartpark`` as a dependency anyway."""
