"""Several bridges for one account: a group of replicas coordinated on etcd."""
