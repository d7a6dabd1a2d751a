// Package soak holds the soak tests of imgmill: many images through the split deployment, with a short
// retention, while every service's open file descriptors and resident memory, the storage's data
// directory and the task database's files are watched. The long one runs only when asked for
// (IMGMILL_SOAK_IMAGES); a short one runs with the other tests. It has tests only.
package soak
