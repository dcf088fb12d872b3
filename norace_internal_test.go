//go:build !race

package lmx

// raceEnabled is set when the tests run with -race.
const raceEnabled = false
