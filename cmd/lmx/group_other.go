//go:build !unix

package main

import (
	"io"
	"os"
	"os/exec"
)

// inGroup leaves cmd where it is: process groups are Unix's.
func inGroup(*exec.Cmd, io.Reader) (restore func()) { return func() {} }

// signalGroup sends sig to p.
func signalGroup(p *os.Process, sig os.Signal) { p.Signal(sig) }

// killGroup kills p.
func killGroup(p *os.Process) { p.Kill() }
