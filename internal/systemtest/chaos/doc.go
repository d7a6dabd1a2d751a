// Package chaos holds the chaos test of imgmill: the split deployment, every service its own process,
// under a load of uploads while every service in turn is killed with SIGKILL and restarted. It has
// tests only.
package chaos
