//go:build race

package imageop

// raceEnabled: the race detector slows the pixel loops several times over, so measured CPU times
// mean nothing against the cost model's constants.
const raceEnabled = true
