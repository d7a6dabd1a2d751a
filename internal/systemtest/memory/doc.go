// Package memory holds the memory tests of imgmill: large images through the split deployment's upload
// paths and through a worker, with each service's resident set read from /proc. It has tests only.
package memory
