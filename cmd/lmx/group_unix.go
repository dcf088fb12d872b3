//go:build unix

package main

import (
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
)

// inGroup makes cmd lead a process group of its own, so that what it starts
// (a shell's children) is signalled and killed with it. When lmx run is in
// the foreground of the terminal that is its stdin, cmd's group takes the
// foreground, so that cmd can read the terminal (a background group that
// reads it is stopped) and Ctrl-C reaches it; restore, called once cmd has
// exited, gives the foreground back.
func inGroup(cmd *exec.Cmd, stdin io.Reader) (restore func()) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	tty, ok := stdin.(*os.File)
	if !ok {
		return func() {}
	}
	fd := int(tty.Fd())
	fg, err := unix.IoctlGetInt(fd, unix.TIOCGPGRP)
	if err != nil || fg != syscall.Getpgrp() {
		return func() {} // not a terminal, or lmx run is in the background
	}
	cmd.SysProcAttr.Foreground = true
	cmd.SysProcAttr.Ctty = fd
	return func() {
		// Setting the foreground from the background raises SIGTTOU,
		// which would stop lmx run.
		signal.Ignore(syscall.SIGTTOU)
		defer signal.Reset(syscall.SIGTTOU)
		unix.IoctlSetPointerInt(fd, unix.TIOCSPGRP, fg)
	}
}

// signalGroup sends sig to the process group p leads.
func signalGroup(p *os.Process, sig os.Signal) {
	syscall.Kill(-p.Pid, syscall.Signal(signalNumber(sig)))
}

// killGroup kills the process group p leads.
func killGroup(p *os.Process) { syscall.Kill(-p.Pid, syscall.SIGKILL) }
