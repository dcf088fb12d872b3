//go:build linux

package main

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// openPTY opens a pseudo-terminal: its master end, and the terminal.
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	require.NoError(t, err)
	t.Cleanup(func() { master.Close() })
	require.NoError(t, unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0))
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	require.NoError(t, err)
	tty, err = os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|syscall.O_NOCTTY, 0)
	require.NoError(t, err)
	t.Cleanup(func() { tty.Close() })
	return master, tty
}

// TestRunOnTerminal: at a terminal, the command's process group is given
// the foreground, so that a command that asks a question can read the
// answer; in the background it would be stopped by SIGTTIN.
func TestRunOnTerminal(t *testing.T) {
	b := newBroker(t)
	master, tty := openPTY(t)
	cmd := exec.Command(lmxBin, b.args("run", "tty", "--", "sh", "-c", `printf 'continue? '; read answer; echo "got $answer"`)...)
	cmd.Env = baseEnv()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	// lmx leads a session whose controlling terminal is tty, in its
	// foreground, as a shell would run it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	require.NoError(t, cmd.Start())
	var waitErr error
	done := make(chan struct{})
	go func() {
		waitErr = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-done:
		case <-time.After(waitShort):
			t.Error("lmx run did not exit when killed")
		}
	})

	out := make(chan string, 1)
	go func() {
		var all strings.Builder
		buf := make([]byte, 256)
		for {
			n, err := master.Read(buf)
			all.Write(buf[:n])
			if strings.Contains(all.String(), "continue? ") && !strings.Contains(all.String(), "yes") {
				master.Write([]byte("yes\n"))
			}
			if strings.Contains(all.String(), "got yes") || err != nil {
				out <- all.String()
				return
			}
		}
	}()
	select {
	case s := <-out:
		require.Contains(t, s, "got yes")
	case <-time.After(waitLong):
		t.Fatal("the command never read its answer from the terminal")
	}
	select {
	case <-done:
		require.NoError(t, waitErr)
	case <-time.After(waitLong):
		t.Fatal("lmx run did not exit after its command")
	}
}
