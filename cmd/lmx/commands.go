package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/oklog/ulid/v2"
)

// defaultAcquireTTL is acquire's --ttl: a lease that outlives its command
// must end by itself if nobody releases it.
const defaultAcquireTTL = 30 * time.Second

// lockFlags are the lock options acquire and run share.
type lockFlags struct {
	limit    int
	owner    string
	shared   bool
	wait     waitFlag
	conflict int // --conflict-exit-code; 0: exitLocked and exitTimeout
}

func addLockFlags(f *cmdFlags) *lockFlags {
	lf := new(lockFlags)
	f.IntVar(&lf.limit, "limit", 1, "holders admitted at once: N > 1 makes the key a semaphore")
	f.StringVar(&lf.owner, "owner", "", "who holds the lock, as inspect and watch show it")
	f.BoolVar(&lf.shared, "shared", false, "a read lock: shared holders together, no exclusive holder with them")
	f.IntVar(&lf.conflict, "conflict-exit-code", 0, "exit with N (1-255), not 3 or 4, when the lock is held or the wait runs out, as flock -E does, so that a command's own status is not mistaken for it")
	return lf
}

func (lf *lockFlags) options() ([]lmx.LockOption, error) {
	if lf.limit < 1 {
		return nil, usageErrorf("--limit must be at least 1")
	}
	if lf.conflict < 0 || lf.conflict > 255 {
		return nil, usageErrorf("--conflict-exit-code %d: an exit code is 1 to 255", lf.conflict)
	}
	opts := []lmx.LockOption{lmx.Limit(lf.limit)}
	if lf.owner != "" {
		opts = append(opts, lmx.Owner(lf.owner))
	}
	if lf.shared {
		opts = append(opts, lmx.Shared())
	}
	return opts, nil
}

// conflictCode is the exit code of a lock not taken: code, unless
// --conflict-exit-code says otherwise.
func (lf *lockFlags) conflictCode(code int) int { return cmp.Or(lf.conflict, code) }

// waitFlag is --wait: a duration, or forever.
type waitFlag time.Duration

// waitForever is --wait forever: no limit.
const waitForever = waitFlag(-1)

func (w *waitFlag) String() string {
	if *w == waitForever {
		return "forever"
	}
	return time.Duration(*w).String()
}

func (w *waitFlag) Set(s string) error {
	if s == "forever" {
		*w = waitForever
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return errors.New(w.expects())
	}
	*w = waitFlag(d)
	return nil
}

func (w *waitFlag) expects() string {
	return "not a duration, such as 30s or 5m, or forever"
}

// take locks key: at once when try is set, else waiting up to lf.wait, or
// for as long as ctx allows when it is 0 or forever. A key held by another
// is exitLocked, a wait that ran out exitTimeout (or lf.conflict).
func take(ctx context.Context, cl *lmx.Client, key string, try bool, lf *lockFlags, opts []lmx.LockOption) (*lmx.Lease, error) {
	if try {
		l, err := cl.TryLock(ctx, key, opts...)
		if errors.Is(err, lmx.ErrLocked) {
			return nil, withCode(lf.conflictCode(exitLocked), fmt.Errorf("%s is held by another", key))
		}
		return l, err
	}
	wctx := ctx
	if lf.wait > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, time.Duration(lf.wait))
		defer cancel()
	}
	l, err := cl.Lock(wctx, key, opts...)
	if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		return nil, withCode(lf.conflictCode(exitTimeout), fmt.Errorf("%s: still held by another after waiting %v", key, &lf.wait))
	}
	return l, err
}

// parseKey parses the args of a command that takes one positional
// argument, a key, and returns it.
func (f *cmdFlags) parseKey(args []string) (string, error) {
	pos, err := f.parseArgs(args, 1)
	if err != nil {
		return "", err
	}
	if len(pos) == 0 {
		return "", usageErrorf("KEY is missing")
	}
	return pos[0], nil
}

// parsePrefix parses the args of a command that takes one optional
// positional argument, a key prefix, and returns it ("" when not given).
func (f *cmdFlags) parsePrefix(args []string) (string, error) {
	pos, err := f.parseArgs(args, 1)
	if err != nil || len(pos) == 0 {
		return "", err
	}
	return pos[0], nil
}

func cmdAcquire(c *cli, cmd *command, args []string) error {
	cc := c.clientFlags(cmd, "print a JSON object")
	ttl := cc.Duration("ttl", defaultAcquireTTL, "the lease ends by itself this long after it is granted, unless released first")
	lf := addLockFlags(cc.cmdFlags)
	cc.Var(&lf.wait, "wait", "wait up to `D` for the lock, or forever (default 0: fail at once, with exit code 3, if it is held)")
	quiet := cc.Bool("q", false, "print only the lock id")
	key, err := cc.parseKey(args)
	if err != nil {
		return err
	}
	if *ttl <= 0 {
		return usageErrorf("--ttl must be positive: a lock that outlives acquire ends by its TTL if nobody releases it")
	}
	opts, err := lf.options()
	if err != nil {
		return err
	}
	opts = append(opts, lmx.TTL(*ttl), lmx.KeepOnDisconnect())

	ctx, cl, _, err := cc.connect()
	if err != nil {
		return err
	}
	defer cc.close() // the lease stays: KeepOnDisconnect
	l, err := take(ctx, cl, key, lf.wait == 0, lf, opts)
	if err != nil {
		return err
	}
	out := leaseOut{Key: key, ID: l.ID().String(), Token: l.Token(), Expires: jsonTime(l.Expires())}
	switch {
	case *cc.jsonOut:
		return printJSON(c.stdout, out)
	case *quiet:
		_, err = fmt.Fprintln(c.stdout, out.ID)
	default:
		_, err = fmt.Fprintf(c.stdout, "acquired %s\nid       %s\ntoken    %d\nexpires  %s\nrelease with: lmx release %s %s\n",
			key, out.ID, out.Token, humanTime(l.Expires()), shellQuote(key), out.ID)
	}
	return err
}

func cmdRelease(c *cli, cmd *command, args []string) error {
	cc := c.clientFlags(cmd, "print a JSON object")
	force := cc.Bool("force", false, "end every lease of KEY, whoever holds it (ForceUnlock)")
	pos, _, err := cc.parse(args, -1) // not parseArgs: --force with an ID has its own message
	if err != nil {
		return err
	}
	var key string
	var id ulid.ULID
	switch {
	case len(pos) == 0:
		return usageErrorf("KEY is missing")
	case *force && len(pos) > 1:
		return usageErrorf("--force releases every lease of KEY: give no ID")
	case *force:
		key = pos[0]
	case len(pos) == 1:
		return usageErrorf("the lock ID is missing (or use --force)")
	case len(pos) > 2:
		return usageErrorf("unexpected argument %q", pos[2])
	default:
		key = pos[0]
		if id, err = parseID(pos[1]); err != nil {
			return err
		}
	}
	ctx, cl, _, err := cc.connect()
	if err != nil {
		return err
	}
	defer cc.close()
	out := releaseOut{Key: key}
	if *force {
		err = cl.ForceUnlock(ctx, key)
		out.Forced = true
	} else {
		err = cl.Release(ctx, key, id)
		out.ID, out.Released = id.String(), true
	}
	if errors.Is(err, lmx.ErrNotHeld) {
		if *force {
			return fmt.Errorf("%s has no holder", key)
		}
		return fmt.Errorf("%s is not held with id %s", key, id)
	}
	if err != nil {
		return err
	}
	if *cc.jsonOut {
		return printJSON(c.stdout, out)
	}
	if *force {
		_, err = fmt.Fprintf(c.stdout, "forced %s: every lease ended\n", key)
	} else {
		_, err = fmt.Fprintf(c.stdout, "released %s %s\n", key, id)
	}
	return err
}

// parseID reads a lock id given on the command line.
func parseID(s string) (ulid.ULID, error) {
	id, err := lmx.ParseID(s)
	if err != nil {
		return id, usageErrorf("ID %q is not a lock id: lock ids are 26 letters and digits, as acquire prints them (such as %s)", s, exampleID)
	}
	return id, nil
}

// exampleID is a lock id for messages.
const exampleID = "01KBVZ3W5R8Q2M0XJ4T6N7PAYC"

func cmdExtend(c *cli, cmd *command, args []string) error {
	cc := c.clientFlags(cmd, "print a JSON object")
	ttl := cc.Duration("ttl", defaultAcquireTTL, "the lease ends by itself this long from now, unless extended or released first")
	pos, err := cc.parseArgs(args, 2)
	if err != nil {
		return err
	}
	switch len(pos) {
	case 0:
		return usageErrorf("KEY is missing")
	case 1:
		return usageErrorf("the lock ID is missing: lmx extend KEY ID --ttl D")
	}
	key := pos[0]
	id, err := parseID(pos[1])
	if err != nil {
		return err
	}
	if *ttl <= 0 {
		return usageErrorf("--ttl must be positive")
	}
	ctx, cl, _, err := cc.connect()
	if err != nil {
		return err
	}
	defer cc.close()
	exp, err := cl.Extend(ctx, key, id, *ttl)
	if errors.Is(err, lmx.ErrNotHeld) {
		return fmt.Errorf("%s is not held with id %s", key, id)
	}
	if err != nil {
		return err
	}
	if *cc.jsonOut {
		return printJSON(c.stdout, leaseOut{Key: key, ID: id.String(), Expires: jsonTime(exp)})
	}
	_, err = fmt.Fprintf(c.stdout, "extended %s %s\nexpires  %s\n", key, id, humanTime(exp))
	return err
}

func cmdLs(c *cli, cmd *command, args []string) error {
	cc := c.clientFlags(cmd, "print a JSON object per key, one per line")
	n := cc.Int("max", lmx.DefaultListLimit, fmt.Sprintf("list at most N keys (at most %d)", lmx.MaxListLimit))
	prefix, err := cc.parsePrefix(args)
	if err != nil {
		return err
	}
	if *n < 1 {
		return usageErrorf("--max must be positive")
	}
	ctx, cl, _, err := cc.connect()
	if err != nil {
		return err
	}
	defer cc.close()
	keys, err := cl.List(ctx, prefix, *n)
	if err != nil {
		return err
	}
	if *cc.jsonOut {
		for _, k := range keys {
			if err := printJSON(c.stdout, keyOut{Key: k.Key, Limit: k.Limit, Holders: k.Holders, Waiters: k.Waiters}); err != nil {
				return err
			}
		}
		return nil
	}
	return printKeys(c.stdout, keys)
}

func cmdInspect(c *cli, cmd *command, args []string) error {
	cc := c.clientFlags(cmd, "print a JSON object")
	key, err := cc.parseKey(args)
	if err != nil {
		return err
	}
	ctx, cl, _, err := cc.connect()
	if err != nil {
		return err
	}
	defer cc.close()
	ki, err := cl.Inspect(ctx, key)
	if err != nil {
		return err
	}
	if *cc.jsonOut {
		return printJSON(c.stdout, newInfoOut(ki))
	}
	return printInfo(c.stdout, ki)
}

func cmdWatch(c *cli, cmd *command, args []string) error {
	cc := c.clientFlags(cmd, "print a JSON object per event, one per line")
	prefix, err := cc.parsePrefix(args)
	if err != nil {
		return err
	}
	ctx, cl, addr, err := cc.connect()
	if err != nil {
		return err
	}
	defer cc.close()
	events, err := cl.Watch(ctx, prefix)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "lmx watch: watching %s at %s; Ctrl-C to stop\n", strconv.Quote(prefix), addr)
	for ev := range events {
		if *cc.jsonOut {
			err = printJSON(c.stdout, newEventOut(ev))
		} else {
			err = printEvent(c.stdout, ev)
		}
		if err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return nil // interrupted: how a watch ends
	}
	return withCode(exitUnreachable, errors.New("the connection to the broker was lost"))
}

func cmdPing(c *cli, cmd *command, args []string) error {
	cc := c.clientFlags(cmd, "print a JSON object")
	if _, err := cc.parseArgs(args, 0); err != nil {
		return err
	}
	t0 := time.Now()
	ctx, cl, addr, err := cc.connect()
	if err != nil {
		return err
	}
	defer cc.close()
	t1 := time.Now()
	if err := cl.Ping(ctx); err != nil {
		return err
	}
	connect, rtt := t1.Sub(t0), time.Since(t1)
	if *cc.jsonOut {
		return printJSON(c.stdout, pingOut{Addr: addr, ConnectSeconds: connect.Seconds(), RoundTripSeconds: rtt.Seconds()})
	}
	_, err = fmt.Fprintf(c.stdout, "%s: connected in %v, round trip %v\n", addr, roundDuration(connect), roundDuration(rtt))
	return err
}

func cmdStats(c *cli, cmd *command, args []string) error {
	cc := c.clientFlags(cmd, "print a JSON object")
	if _, err := cc.parseArgs(args, 0); err != nil {
		return err
	}
	ctx, cl, _, err := cc.connect()
	if err != nil {
		return err
	}
	defer cc.close()
	s, err := cl.Stats(ctx)
	if err != nil {
		return err
	}
	if *cc.jsonOut {
		return printJSON(c.stdout, newStatsOut(&s))
	}
	return printStats(c.stdout, &s)
}
