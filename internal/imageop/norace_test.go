//go:build !race

package imageop

const raceEnabled = false
