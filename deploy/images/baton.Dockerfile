# baton:local: baton-replica, baton-controller, baton-proxy and batonctl (from target/release)
# in /usr/local/bin on baton-base:local. Built by scripts/images.sh, which stages layer.tar
# (the binaries, root-owned, reproducible) next to a copy of this file and builds with the
# legacy builder and no pull: baton-base:local exists only in the local engine.
# No ENTRYPOINT or CMD: compose (or `docker run`) gives the command, e.g.
#   baton-replica --config /etc/baton/replica.toml
FROM baton-base:local
ADD layer.tar /
USER baton
WORKDIR /var/lib/baton
