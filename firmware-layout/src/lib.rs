//! Outpost firmware layout: GPT disk image with A/B slots and boot entries (to be written)
