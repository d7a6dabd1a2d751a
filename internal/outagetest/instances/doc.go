// Package instances holds the system tests of imgmill on real engines (PostgreSQL, MinIO and a
// three-member etcd cluster) with several instances of every service, some of which are killed under
// load. It has tests only.
package instances
