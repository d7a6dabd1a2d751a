// Package mixes is the system test of imgmill mixed with the reference design: each of the six services
// swapped for a stand-in of the reference's (internal/referencetest) in an imgmill deployment, and each of
// imgmill's alone among stand-ins, every service in this process on its own loopback port and all of
// them finding each other through the kv store. It has tests only.
package mixes
