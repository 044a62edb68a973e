#!/bin/sh
# podman with nsbypass, two ways. Install first (as root):
#   nsbypass install podman            # hooks.d files in /etc/containers/oci/hooks.d
#   nsbypass cdi generate              # /etc/cdi/nsbypass.yaml, one CDI device per profile
# The hooks.d files (copies in ./hooks.d) run nsbypass only for containers
# that carry an nsbypass.io/network or nsbypass.io/profile annotation.

# 1. Annotations: a MACVLAN on network "fast" and the "onload" profile,
#    carried in by the prestart hook.
podman run -d --name trader \
    --annotation nsbypass.io/network=fast \
    --annotation nsbypass.io/ip=fast=10.10.0.150 \
    --annotation nsbypass.io/profile=onload \
    registry.example.com/trader:latest

# 2. CDI: the profile as a device; podman puts its nodes, mounts and env
#    (LD_PRELOAD, EF_*) into the spec itself. Networks still come by annotation.
podman run -d --name feed \
    --device nsbypass.io/profile=onload \
    --annotation nsbypass.io/network=fast \
    registry.example.com/feed:latest

# Removing the container runs the poststop hook: the address returns to the pool.
podman rm -f trader feed
