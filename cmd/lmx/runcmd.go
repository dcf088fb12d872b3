package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/lmx-go/lmx"
)

// Defaults of run's --keepalive.
const (
	// keepAliveTTL is the TTL of a kept-alive lease when --ttl is not given.
	keepAliveTTL = 30 * time.Second
	// keepAliveMax bounds the renewals: about ten years, so that a command
	// keeps its lock for as long as it runs.
	keepAliveMax = 10 * 365 * 24 * time.Hour
)

func cmdRun(c *cli, cmd *command, args []string) error {
	r, err := parseRun(c, cmd, args)
	if err != nil {
		return err
	}
	cl, l, err := takeForRun(c, r)
	if cl != nil {
		defer cl.Close()
	}
	if err != nil {
		return err
	}
	return runHolding(c, r, l)
}

// runArgs is what lmx run's arguments ask for.
type runArgs struct {
	key     string
	command []string // CMD and its arguments
	try     bool
	lf      *lockFlags
	cf      *connFlags
	opts    []lmx.LockOption
}

// parseRun parses lmx run's arguments.
func parseRun(c *cli, cmd *command, args []string) (*runArgs, error) {
	f := c.newFlags(cmd)
	ttl := f.Duration("ttl", 0, "the lease ends by itself this long after it is granted, even while the command runs (default: none, held as long as lmx run lives)")
	keepAlive := f.Bool("keepalive", false, "have the broker renew the TTL while the command runs, when half of it is left (--ttl defaults to 30s then)")
	try := f.Bool("try", false, "fail at once, with exit code 3, if the lock is held")
	lf := addLockFlags(f)
	f.Var(&lf.wait, "wait", "wait up to `D` for the lock, then fail with exit code 4 (default: as long as it takes, as forever does)")
	cf := addConnFlags(f)
	pos, command, err := f.parse(args, 1)
	if err != nil {
		return nil, err
	}
	if len(pos) == 0 {
		return nil, usageErrorf("KEY is missing")
	}
	if len(command) == 0 {
		return nil, usageErrorf("the command is missing: lmx run KEY -- CMD ARGS...")
	}
	if *ttl < 0 {
		return nil, usageErrorf("--ttl must not be negative")
	}
	if *try && lf.wait != 0 {
		return nil, usageErrorf("--try and --wait do not go together")
	}
	opts, err := lf.options()
	if err != nil {
		return nil, err
	}
	if *keepAlive && *ttl == 0 {
		*ttl = keepAliveTTL
	}
	if *ttl > 0 {
		opts = append(opts, lmx.TTL(*ttl))
	}
	if *keepAlive {
		opts = append(opts, lmx.KeepAlive(keepAliveMax))
	}
	return &runArgs{key: pos[0], command: command, try: *try, lf: lf, cf: cf, opts: opts}, nil
}

// takeForRun connects and takes r's lock, returning the client if it
// connected. Until the command starts, a signal cuts the wait short: the
// lock, if granted, is released, and the error's exit code is the
// signal's, as a shell's would be.
func takeForRun(c *cli, r *runArgs) (*lmx.Client, *lmx.Lease, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopWatch, watching := make(chan struct{}), make(chan struct{})
	var caught os.Signal
	go func() {
		defer close(watching)
		select {
		case caught = <-c.signals:
			cancel()
		case <-stopWatch:
		}
	}()
	cl, l, err := connectAndTake(ctx, c, r.cf, r.key, r.try, r.lf, r.opts)
	close(stopWatch)
	<-watching
	if caught != nil {
		if l != nil {
			unlock(l)
		}
		return cl, nil, withCode(128+signalNumber(caught), fmt.Errorf("%w by %s before the command started", errInterrupted, signalName(caught)))
	}
	return cl, l, err
}

// runHolding runs r's command with l held, passing it the signals lmx run
// receives; it kills the command's process group if l is lost, releases l
// once the command exits, and returns the command's exit status.
func runHolding(c *cli, r *runArgs, l *lmx.Lease) error {
	child := exec.Command(r.command[0], r.command[1:]...)
	child.Stdin, child.Stdout, child.Stderr = c.stdin, c.stdout, c.stderr
	restore := inGroup(child, c.stdin)
	child.Env = append(c.environ(),
		"LMX_LOCK_KEY="+r.key,
		"LMX_LOCK_ID="+l.ID().String(),
		"LMX_LOCK_TOKEN="+strconv.FormatUint(l.Token(), 10))
	if err := child.Start(); err != nil {
		restore()
		unlock(l)
		code := 126
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
			code = 127
		}
		return withCode(code, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()
	var err error
	for {
		select {
		case sig := <-c.signals:
			signalGroup(child.Process, sig) // then wait for CMD to exit
			continue
		case <-l.Done():
			killGroup(child.Process)
			<-exited
			restore()
			return withCode(exitLeaseLost, fmt.Errorf("the lock on %s was lost while the command ran (%v); the command and its process group were killed", r.key, l.Err()))
		case err = <-exited:
		}
		break
	}
	restore()
	// What CMD left running in its group goes on: a daemon it started is its
	// business, as under flock(1).
	if lost := l.Err(); lost != nil {
		return withCode(exitLeaseLost, fmt.Errorf("the lock on %s was lost while the command ran (%v)", r.key, lost))
	}
	unlock(l)
	return exitStatus(err)
}

// connectAndTake connects and locks key, returning the client if it
// connected and the lease if it was granted.
func connectAndTake(ctx context.Context, c *cli, cf *connFlags, key string, try bool, lf *lockFlags, opts []lmx.LockOption) (*lmx.Client, *lmx.Lease, error) {
	cl, _, err := c.connect(ctx, cf)
	if err != nil {
		return nil, nil, err
	}
	l, err := take(ctx, cl, key, try, lf, opts)
	return cl, l, err
}

// signalNumber is sig's number: SIGINT 2, SIGTERM 15.
func signalNumber(sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok {
		return int(s)
	}
	return int(syscall.SIGTERM)
}

// signalName is the name a shell user knows sig by.
func signalName(sig os.Signal) string {
	switch sig {
	case os.Interrupt:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return sig.String()
}

// unlock releases l, giving up after a while: the broker releases it with
// the session anyway.
func unlock(l *lmx.Lease) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l.Unlock(ctx)
}

// exitStatus turns how a command ended into lmx run's exit code.
func exitStatus(err error) error {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return err
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return withCode(128+int(ws.Signal()), nil)
	}
	return withCode(ee.ExitCode(), nil)
}
