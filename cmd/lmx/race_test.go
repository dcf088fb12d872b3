//go:build race

package main

// raceEnabled is set when the tests run with -race; the lmx binary is then
// built with it too, so that its own races fail the tests.
const raceEnabled = true
