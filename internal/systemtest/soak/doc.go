// Package soak holds the soak test of imgmill: many images through the split deployment while every
// service's open file descriptors and resident memory are watched. It runs only when asked for
// (IMGMILL_SOAK_IMAGES). It has tests only.
package soak
