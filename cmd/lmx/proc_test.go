//go:build unix

package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// lmxBin is the lmx binary that TestMain builds.
var lmxBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lmxbin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	lmxBin = filepath.Join(dir, "lmx")
	args := []string{"build", "-o", lmxBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, ".")...)
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Bounds of every wait in these tests.
const (
	waitLong  = 20 * time.Second // a process that should end
	waitShort = 10 * time.Second // a line that should appear
)

// shortDir returns a new directory with a short path, for Unix sockets
// (their paths are limited to about 100 bytes, and t.TempDir's can be
// longer), removed when the test ends.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "lmx")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// baseEnv is the tests' environment without the variables lmx reads, so
// that the developer's settings do not leak in, and with XDG_RUNTIME_DIR
// pointing nowhere, so that no test finds a real broker by default.
func baseEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LMX_") && !strings.HasPrefix(kv, "XDG_RUNTIME_DIR=") {
			env = append(env, kv)
		}
	}
	env = append(env, "XDG_RUNTIME_DIR=/nonexistent-lmx-test")
	if raceEnabled { // not the race detector's default second, at every exit
		env = append(env, "GORACE=atexit_sleep_ms=10 "+os.Getenv("GORACE"))
	}
	return append(env, extra...)
}

// output collects what a process writes and lets a test wait for a line.
type output struct {
	mu      sync.Mutex
	all     strings.Builder
	lines   []string
	partial string
	changed chan struct{} // closed, and replaced, when a line comes
}

func newOutput() *output { return &output{changed: make(chan struct{})} }

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.all.Write(p)
	s := o.partial + string(p)
	for {
		i := strings.IndexByte(s, '\n')
		if i < 0 {
			break
		}
		o.lines = append(o.lines, s[:i])
		s = s[i+1:]
	}
	o.partial = s
	close(o.changed)
	o.changed = make(chan struct{})
	return len(p), nil
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.all.String()
}

func (o *output) Lines() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.lines...)
}

// waitLine waits for a line for which match is true, and returns it; it
// gives up when done is closed (the writer has exited) or after waitShort.
func (o *output) waitLine(t *testing.T, done <-chan struct{}, what string, match func(string) bool) string {
	t.Helper()
	deadline := time.NewTimer(waitShort)
	defer deadline.Stop()
	for seen, exited := 0, false; ; {
		o.mu.Lock()
		lines, changed := o.lines, o.changed
		o.mu.Unlock()
		for ; seen < len(lines); seen++ {
			if match(lines[seen]) {
				return lines[seen]
			}
		}
		if exited {
			t.Fatalf("no %s before the process exited; output:\n%s", what, o.String())
		}
		select {
		case <-changed:
		case <-done: // its output is all in: look once more
			exited, done = true, nil
		case <-deadline.C:
			t.Fatalf("no %s within %v; output:\n%s", what, waitShort, o.String())
		}
	}
}

// waitLines waits for n lines of stdout and returns them.
func (p *proc) waitLines(t *testing.T, n int) []string {
	t.Helper()
	p.stdout.waitLine(t, p.done, fmt.Sprintf("%d lines of stdout", n), func(string) bool { return len(p.stdout.Lines()) >= n })
	return p.stdout.Lines()[:n]
}

// waitOut waits for a line of stdout containing s.
func (p *proc) waitOut(t *testing.T, s string) string {
	t.Helper()
	return p.stdout.waitLine(t, p.done, fmt.Sprintf("stdout line with %q", s), func(l string) bool { return strings.Contains(l, s) })
}

// waitErr waits for a line of stderr containing s.
func (p *proc) waitErr(t *testing.T, s string) string {
	t.Helper()
	return p.stderr.waitLine(t, p.done, fmt.Sprintf("stderr line with %q", s), func(l string) bool { return strings.Contains(l, s) })
}

// A proc is an lmx process.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr *output
	done           chan struct{} // closed when it has exited
}

// spawn starts lmx with args in env (baseEnv when nil), in a process group
// of its own that is killed when the test ends.
func spawn(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	if env == nil {
		env = baseEnv()
	}
	p := &proc{cmd: exec.Command(lmxBin, args...), stdout: newOutput(), stderr: newOutput(), done: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p.cmd.WaitDelay = time.Second // for a command's children that hold its output
	require.NoError(t, p.cmd.Start())
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL) // it and whatever it started
		select {
		case <-p.done:
		case <-time.After(waitShort):
			t.Errorf("lmx %s did not exit when killed", strings.Join(args, " "))
		}
		if raceEnabled && strings.Contains(p.stderr.String(), "DATA RACE") {
			t.Errorf("lmx %s raced:\n%s", strings.Join(args, " "), p.stderr)
		}
	})
	return p
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(waitLong):
		t.Fatalf("%v still runs after %v; stdout:\n%s\nstderr:\n%s", p.cmd.Args, waitLong, p.stdout, p.stderr)
	}
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		t.Fatalf("%v was killed by %v; stderr:\n%s", p.cmd.Args, ws.Signal(), p.stderr)
	}
	return p.cmd.ProcessState.ExitCode()
}

func (p *proc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(sig))
}

// result is how an lmx process ended.
type result struct {
	code           int
	stdout, stderr string
}

// runLmxEnv runs lmx with args in env to its end.
func runLmxEnv(t *testing.T, env []string, args ...string) result {
	t.Helper()
	p := spawn(t, env, args...)
	code := p.wait(t)
	return result{code: code, stdout: p.stdout.String(), stderr: p.stderr.String()}
}

// runLmx runs lmx with args to its end.
func runLmx(t *testing.T, args ...string) result {
	t.Helper()
	return runLmxEnv(t, nil, args...)
}

// must runs lmx with args and requires it to succeed.
func must(t *testing.T, args ...string) string {
	t.Helper()
	r := runLmx(t, args...)
	require.Equal(t, 0, r.code, "lmx %v: stdout:\n%s\nstderr:\n%s", args, r.stdout, r.stderr)
	return r.stdout
}

// mustFail runs lmx with args and requires exit code code.
func mustFail(t *testing.T, code int, args ...string) result {
	t.Helper()
	r := runLmx(t, args...)
	require.Equal(t, code, r.code, "lmx %v: stdout:\n%s\nstderr:\n%s", args, r.stdout, r.stderr)
	return r
}

// eventually polls cond every 20ms until it holds, for up to waitShort.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitShort)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, waitShort)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
