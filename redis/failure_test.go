package redis_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/lmx-go/lmx/redis"
	"github.com/lmx-go/lmx/redis/internal/redistest"
	"github.com/oklog/ulid/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The tests of this file are Redisson's failure modes (see the README's
// Redis section): each one a way a fair lock on Redis left waiters hanging.

// childEnv, when set to a lmx.Open URL, makes the test binary a child that
// locks the key "k" there, prints "held TOKEN", and waits to be killed; it
// prints "revoked" if a preemptor asks it to make way.
const childEnv = "LMX_REDIS_TEST_CHILD"

func runChild() int {
	ctx := context.Background()
	l, err := lmx.Open(ctx, os.Getenv(childEnv))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	lease, err := l.Lock(ctx, "k")
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println("held", lease.Token())
	<-lease.Revoked()
	fmt.Println("revoked")
	select {}
}

// contended opens two Lockers with sessionTTL on a new prefix, the second
// with recheck unless it is 0: the first holds "k", and the second's Lock of
// it, named "w", is queued and reports on ch.
func contended(t *testing.T, sessionTTL, recheck time.Duration) (pfx string, a, b *redis.Locker, held *lmx.Lease, ch chan lockResult) {
	t.Helper()
	pfx = newPrefix()
	a, b = open(t, pfx, sessionTTL), open(t, pfx, sessionTTL)
	if recheck > 0 {
		b.SetRecheck(recheck)
	}
	held, err := a.Lock(t.Context(), "k")
	require.NoError(t, err)
	ch = make(chan lockResult, 1)
	lockAsync(t.Context(), b, ch, "w", "k")
	waitQueued(t, a, "k", 1)
	return pfx, a, b, held, ch
}

// await waits for a Lock's result, failing the test after within.
func await(t *testing.T, ch <-chan lockResult, within time.Duration) lockResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(within):
		t.Fatalf("no Lock returned within %v", within)
		return lockResult{}
	}
}

// inOrder takes the next Lock results, which must be those named, in that
// order ("" for any), with tokens above after and increasing, and unlocks
// each.
func inOrder(t *testing.T, ch <-chan lockResult, after uint64, names ...string) {
	t.Helper()
	for _, name := range names {
		r := await(t, ch, 10*time.Second)
		require.NoError(t, r.err)
		if name != "" {
			assert.Equal(t, name, r.name, "out of order")
		}
		assert.Greater(t, r.lease.Token(), after)
		after = r.lease.Token()
		require.NoError(t, r.lease.Unlock(t.Context()))
	}
}

type lockResult struct {
	name  string
	lease *lmx.Lease
	err   error
}

func lockAsync(ctx context.Context, l lmx.Locker, ch chan<- lockResult, name, key string, opts ...lmx.LockOption) {
	go func() {
		lease, err := l.Lock(ctx, key, opts...)
		ch <- lockResult{name, lease, err}
	}()
}

// waitQueued waits until key has n waiters.
func waitQueued(t *testing.T, a lmx.Admin, key string, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		ki, err := a.Inspect(t.Context(), key)
		require.NoError(t, err)
		if len(ki.Waiters) == n {
			return
		}
		require.False(t, time.Now().After(deadline), "key %q has %d waiters, want %d", key, len(ki.Waiters), n)
	}
}

// A holder process killed with SIGKILL says nothing: the waiter of another
// process gets the key once the dead one's session key expires, and its
// token is higher. Redisson's #6150, #3178, #3202.
func TestKilledHolder(t *testing.T) {
	pfx := newPrefix()
	token, _, kill := holdInChild(t, pfx)

	l := open(t, pfx, 2*time.Second)
	l.SetRecheck(time.Hour) // the grant must come from the session's expiry
	ch := make(chan lockResult, 2)
	lockAsync(t.Context(), l, ch, "w1", "k")
	waitQueued(t, l, "k", 1)
	lockAsync(t.Context(), l, ch, "w2", "k")
	waitQueued(t, l, "k", 2)
	kill()
	inOrder(t, ch, token, "w1", "w2")
}

// holdInChild starts a child process that holds "k" under pfx with a
// session TTL of 1s, and returns its token, what it says next, and a kill
// that kills it (SIGKILL) and waits for it to exit.
func holdInChild(t *testing.T, pfx string) (token uint64, out *bufio.Reader, kill func()) {
	t.Helper()
	url := fmt.Sprintf("redis://%s/0?prefix=%s&session_ttl=1s", addr, pfx)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+url)
	pipe, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	out = bufio.NewReader(pipe)
	line, err := out.ReadString('\n')
	require.NoError(t, err)
	f := strings.Fields(line)
	require.Len(t, f, 2, "the child said %q", line)
	require.Equal(t, "held", f[0], "the child said %q", line)
	token, err = strconv.ParseUint(f[1], 10, 64)
	require.NoError(t, err)
	return token, out, func() {
		require.NoError(t, cmd.Process.Kill())
		<-exited
	}
}

// A waiter that waits far longer than any timeout of the backend (several
// session TTLs and rechecks) stays queued and gets the key. Redisson's #3004.
func TestOldWaiter(t *testing.T) {
	pfx := newPrefix()
	a, b := open(t, pfx, 2*time.Second), open(t, pfx, 2*time.Second)
	a.SetRecheck(50 * time.Millisecond)
	b.SetRecheck(50 * time.Millisecond)
	held, err := a.Lock(t.Context(), "k")
	require.NoError(t, err)
	ch := make(chan lockResult, 2)
	lockAsync(t.Context(), b, ch, "old", "k")
	waitQueued(t, a, "k", 1)
	time.Sleep(5 * time.Second) // 2.5 session TTLs, about 100 rechecks
	lockAsync(t.Context(), a, ch, "young", "k")
	waitQueued(t, a, "k", 2)
	select {
	case r := <-ch:
		t.Fatalf("%s returned (%v) while the key is held", r.name, r.err)
	default:
	}
	require.NoError(t, held.Unlock(t.Context()))
	inOrder(t, ch, held.Token(), "old", "young")
}

// A TTL lease whose Locker is gone (KeepOnDisconnect, then Close) expires
// in Redis with nobody to publish it: the many waiters queued behind it are
// granted one after another, in order, by what they learned of its expiry,
// not by a recheck. Redisson's #3730, #2883, #1104.
func TestExpiryWithManyWaiters(t *testing.T) {
	pfx := newPrefix()
	holder := open(t, pfx, 2*time.Second)
	// Its TTL leaves the waiters time to queue, one after another.
	lease, err := holder.Lock(t.Context(), "k", lmx.TTL(3*time.Second), lmx.KeepOnDisconnect())
	require.NoError(t, err)
	require.NoError(t, holder.Close())
	assert.ErrorIs(t, lease.Err(), lmx.ErrClosed)

	const n = 50
	lockers := make([]*redis.Locker, 5)
	for i := range lockers {
		// Sessions that outlast a busy machine's stalls: the waiters
		// must all stay queued.
		lockers[i] = open(t, pfx, 10*time.Second)
		lockers[i].SetRecheck(time.Hour)
	}
	ch := make(chan lockResult, n)
	for i := range n {
		lockAsync(t.Context(), lockers[i%len(lockers)], ch, strconv.Itoa(i), "k")
		waitQueued(t, lockers[0], "k", i+1)
	}
	names := make([]string, n)
	for i := range names {
		names[i] = strconv.Itoa(i)
	}
	inOrder(t, ch, lease.Token(), names...)
	st, err := lockers[0].Stats(t.Context())
	require.NoError(t, err)
	assert.Equal(t, uint64(1), st.Expiries)
	assert.Zero(t, st.Keys)
}

// Messages published while a Locker's pub/sub connection is down are lost:
// the Locker's waiters look again when it has reconnected, and get the key.
func TestSubscriberReconnect(t *testing.T) {
	// Only the reconnection may make the waiter look again.
	_, a, b, held, ch := contended(t, 2*time.Second, time.Hour)

	rdb := client(t)
	// Kill every pub/sub connection, and release while they are down.
	require.NoError(t, rdb.Do(t.Context(), "CLIENT", "KILL", "TYPE", "pubsub").Err())
	require.NoError(t, held.Unlock(t.Context()))
	inOrder(t, ch, held.Token(), "w")

	// And both still hear grants.
	held, err := b.Lock(t.Context(), "k")
	require.NoError(t, err)
	lockAsync(t.Context(), a, ch, "w", "k")
	waitQueued(t, a, "k", 1)
	require.NoError(t, held.Unlock(t.Context()))
	inOrder(t, ch, held.Token(), "w")
}

// A Redis that restarts without its data ends every lease (ErrSessionLost)
// and fails every waiter; the Lockers then work again on the new Redis, and
// tokens keep increasing.
func TestRedisRestart(t *testing.T) {
	srv, err := redistest.Start("127.0.0.1:0", "")
	require.NoError(t, err)
	t.Cleanup(func() { srv.Stop() })
	url := fmt.Sprintf("redis://%s?session_ttl=1s", srv.Addr)
	openHere := func() lmx.Locker {
		l, err := lmx.Open(t.Context(), url)
		require.NoError(t, err)
		t.Cleanup(func() { l.Close() })
		return l
	}
	a, b := openHere(), openHere()
	held, err := a.Lock(t.Context(), "k")
	require.NoError(t, err)
	ch := make(chan lockResult, 1)
	lockAsync(t.Context(), b, ch, "w", "k")
	waitQueued(t, a.(lmx.Admin), "k", 1)

	srv.Stop()
	srv, err = redistest.Start(srv.Addr, "")
	require.NoError(t, err)

	select {
	case <-held.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the holder did not learn that Redis lost its lease")
	}
	assert.ErrorIs(t, held.Err(), lmx.ErrSessionLost)
	assert.ErrorIs(t, held.Unlock(t.Context()), lmx.ErrNotHeld)
	r := await(t, ch, 10*time.Second)
	assert.ErrorIs(t, r.err, lmx.ErrSessionLost)

	again, err := b.Lock(t.Context(), "k")
	require.NoError(t, err)
	assert.Greater(t, again.Token(), held.Token(), "tokens increase across a Redis that lost its data")
	lockAsync(t.Context(), a, ch, "w", "k")
	waitQueued(t, a.(lmx.Admin), "k", 1)
	require.NoError(t, again.Unlock(t.Context()))
	inOrder(t, ch, again.Token(), "w")
}

// A hot key, which 20 Lockers take and release in turn, hands every grant
// on by a message: with the rechecks turned off, every Lock returns.
func TestHotKeyGrantsByMessage(t *testing.T) {
	pfx := newPrefix()
	lockers := make([]*redis.Locker, 20)
	for i := range lockers {
		// Sessions that outlast a busy machine's stalls: the waiters
		// must all stay queued.
		lockers[i] = open(t, pfx, 10*time.Second)
		lockers[i].SetRecheck(time.Hour)
	}
	const rounds = 200
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	errs := make(chan error, len(lockers))
	for i, l := range lockers {
		go func() {
			for r := range rounds {
				lease, err := l.Lock(ctx, "k")
				if err != nil {
					errs <- fmt.Errorf("worker %d, round %d: %w", i, r, err)
					return
				}
				if err := lease.Unlock(ctx); err != nil {
					errs <- fmt.Errorf("worker %d, round %d: unlock: %w", i, r, err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range lockers {
		require.NoError(t, <-errs)
	}
}

// An Unlock that Redis does not answer does not report success: Redis may
// have ended the lease already (its TTL or its session ran out while the
// link was down) and granted the key to another, so the lease ends with
// ErrSessionLost, and the Locker releases it in Redis once Redis is back
// (found by TestChaosRedis, seed 2: a double grant and a token out of
// order behind the fault proxy).
func TestUnlockUnanswered(t *testing.T) {
	srv, err := redistest.Start("127.0.0.1:0", "")
	require.NoError(t, err)
	t.Cleanup(func() { srv.Stop() })
	l, err := lmx.Open(t.Context(), fmt.Sprintf("redis://%s?session_ttl=10s", srv.Addr))
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	held, err := l.Lock(t.Context(), "k")
	require.NoError(t, err)

	srv.Stop()
	err = held.Unlock(t.Context())
	require.Error(t, err)
	assert.NotErrorIs(t, err, lmx.ErrReleased)
	assert.ErrorIs(t, held.Err(), lmx.ErrSessionLost)
	assert.ErrorIs(t, held.Unlock(t.Context()), lmx.ErrNotHeld)
}

// A grant message that reaches a Locker whose session has not been
// refreshed for a while is checked with Redis before Lock returns: Redis
// may have dropped the session, and the grant with it, while the message
// was on its way (a stall of the link longer than the session TTL).
func TestLateGrantChecked(t *testing.T) {
	pfx, _, b, held, ch := contended(t, time.Hour, 0)

	// A grant of b's request that Redis does not have.
	rdb := client(t)
	q, err := rdb.LRange(t.Context(), pfx+"q:k", 0, -1).Result()
	require.NoError(t, err)
	require.Len(t, q, 1)
	f := strings.Split(q[0], "|") // when it queued, then the waiter record
	b.Unsure()
	require.NoError(t, rdb.Publish(t.Context(), pfx+"c:"+f[3], "g|"+f[1]+"|1|0|k").Err())
	select {
	case r := <-ch:
		t.Fatalf("Lock returned on a grant Redis does not have: %+v", r)
	case <-time.After(500 * time.Millisecond):
	}
	require.NoError(t, held.Unlock(t.Context()))
	inOrder(t, ch, held.Token(), "w")
}

// A copy of a holder's own request left in its key's queue (a retried
// acquire script: the first run granted it, the client did not hear, the
// retry queued it) is dropped when the lease ends, not granted again to a
// request no one waits for (found by TestChaosRedis, seed 2).
func TestStaleRequestNotGranted(t *testing.T) {
	for _, end := range []string{"Unlock", "ForceUnlock", "Release"} {
		t.Run(end, func(t *testing.T) {
			pfx := newPrefix()
			a, b := open(t, pfx, 2*time.Second), open(t, pfx, 2*time.Second)
			held, err := a.Lock(t.Context(), "k")
			require.NoError(t, err)
			rdb := client(t)
			lid, err := rdb.Get(t.Context(), pfx+"s:"+a.Session()).Result()
			require.NoError(t, err)
			rec := strings.Join([]string{queuedNow(), held.ID().String(), a.Session(), lid, "x", "0", "0", "0", "0", "-1", "0", ""}, "|")
			require.NoError(t, rdb.RPush(t.Context(), pfx+"q:k", rec).Err())

			switch end {
			case "Unlock":
				require.NoError(t, held.Unlock(t.Context()))
			case "ForceUnlock":
				require.NoError(t, b.ForceUnlock(t.Context(), "k"))
			case "Release":
				require.NoError(t, b.Release(t.Context(), "k", held.ID()))
			}
			ki, err := b.Inspect(t.Context(), "k")
			require.NoError(t, err)
			assert.Empty(t, ki.Holders, "the stale copy was granted")
			assert.Empty(t, ki.Waiters)
		})
	}
}

// A grant that no Lock call waits for any more, as when a waiter gave up
// while Redis did not answer its take-back, is taken back by its Locker:
// its session lives on, so nobody else would ever remove it, and the key
// would stay held by no one (found by TestChaosRedis, seed 1).
func TestOrphanGrantTakenBack(t *testing.T) {
	pfx := newPrefix()
	a, b := open(t, pfx, 2*time.Second), open(t, pfx, 2*time.Second)
	held, err := b.Lock(t.Context(), "k")
	require.NoError(t, err)
	// a's session, and a request of a's queued with no Lock call behind it.
	warm, err := a.Lock(t.Context(), "warm")
	require.NoError(t, err)
	require.NoError(t, warm.Unlock(t.Context()))
	rdb := client(t)
	lid, err := rdb.Get(t.Context(), pfx+"s:"+a.Session()).Result()
	require.NoError(t, err)
	rec := strings.Join([]string{queuedNow(), ulid.Make().String(), a.Session(), lid, "x", "0", "0", "0", "0", "-1", "0", ""}, "|")
	require.NoError(t, rdb.RPush(t.Context(), pfx+"q:k", rec).Err())

	require.NoError(t, held.Unlock(t.Context())) // grants the orphan
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	next, err := b.Lock(ctx, "k")
	require.NoError(t, err, "the orphan's grant was never taken back")
	require.NoError(t, next.Unlock(t.Context()))
}

// queuedNow is the first field of a queue's entry made now: when it queued.
func queuedNow() string { return strconv.FormatInt(time.Now().UnixMilli(), 10) }

// An acquire script that Redis runs once more for a request already queued
// (a retry of one whose reply was lost) leaves the queue as it is: the
// request waits once, and is granted once.
func TestRetriedQueueing(t *testing.T) {
	pfx, _, b, held, ch := contended(t, 2*time.Second, time.Hour)
	rdb := client(t)
	entries, err := rdb.LRange(t.Context(), pfx+"q:k", 0, -1).Result()
	require.NoError(t, err)
	require.Len(t, entries, 1)
	_, rec, _ := strings.Cut(entries[0], "|") // after when it queued
	kind, err := b.Acquire(t.Context(), "k", rec)
	require.NoError(t, err)
	assert.Equal(t, "w", kind)
	entries, err = rdb.LRange(t.Context(), pfx+"q:k", 0, -1).Result()
	require.NoError(t, err)
	assert.Len(t, entries, 1, "the request queued twice")

	require.NoError(t, held.Unlock(t.Context()))
	inOrder(t, ch, held.Token(), "w")
	ki, err := b.Inspect(t.Context(), "k")
	require.NoError(t, err)
	assert.Empty(t, ki.Holders)
	assert.Empty(t, ki.Waiters)
}
