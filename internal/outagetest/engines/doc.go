// Package engines holds the system tests of imgmill on real engines (PostgreSQL, MinIO and a
// three-member etcd cluster) that take an engine away: each stopped for a while under load, and all of
// them down when the services start. It has tests only.
package engines
