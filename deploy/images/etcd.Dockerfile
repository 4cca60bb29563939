# baton-etcd:local: etcd and etcdctl from Debian's etcd-server and etcd-client packages, on
# baton-base:local. Built by scripts/images.sh, which stages layer.tar (/usr/bin/etcd and
# /usr/bin/etcdctl root-owned, /var/lib/etcd owned by baton with mode 0700, reproducible) next to
# a copy of this file and builds with the legacy builder and no pull.
# Without --data-dir, etcd keeps its data in ./default.etcd, i.e. /var/lib/etcd/default.etcd.
FROM baton-base:local
ADD layer.tar /
USER baton
WORKDIR /var/lib/etcd
CMD ["etcd"]
