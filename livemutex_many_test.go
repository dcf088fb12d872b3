package lmx_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// These tests drive live-mutex's acquire-many and release-many
// (livemutex_many.go) as its clients send them.

func (r *lmRaw) acquireMany(uuid string, keys any, extra map[string]any) map[string]any {
	r.t.Helper()
	m := map[string]any{"type": "acquire-many", "uuid": uuid, "keys": keys, "ttl": nil, "pid": 1, "keepLocksAfterDeath": false, "wait": true}
	for k, v := range extra {
		m[k] = v
	}
	r.sendJSON(m)
	return r.recv()
}

func (r *lmRaw) releaseMany(uuid, lockUUID string) map[string]any {
	r.t.Helper()
	r.sendJSON(map[string]any{"type": "release-many", "uuid": uuid, "lockUuid": lockUUID})
	return r.recv()
}

// holders returns the Owner of each holder of key.
func holders(t *testing.T, b *lmx.Broker, key string) []string {
	t.Helper()
	ki, err := b.Inspect(context.Background(), key)
	require.NoError(t, err)
	owners := []string{}
	for _, h := range ki.Holders {
		owners = append(owners, h.Owner)
	}
	return owners
}

func TestLiveMutexAcquireManyGrantAndRelease(t *testing.T) {
	b := lmBroker(t, nil)
	ctx := context.Background()
	a, c := lmPipe(t, b), lmPipe(t, b)
	g := a.acquireMany("M", []string{"c", "a", "b", "a"}, nil)
	assert.Equal(t, "acquire-many", g["type"])
	assert.Equal(t, "M", g["uuid"])
	assert.Equal(t, true, g["acquired"])
	assert.Equal(t, "M", g["lockUuid"])
	assert.Equal(t, []any{"a", "b", "c"}, g["keys"]) // sorted, deduplicated
	tokens := g["fencingTokens"].(map[string]any)
	strs := g["fencingTokenStrings"].(map[string]any)
	require.Len(t, tokens, 3)
	for _, k := range []string{"a", "b", "c"} {
		assert.NotZero(t, tokens[k], k)
		assert.NotEmpty(t, strs[k], k)
		assert.Equal(t, []string{"livemutex:M"}, holders(t, b, k), k)
	}
	assert.NotContains(t, g, "error")
	assert.NotContains(t, g, "contendedKey")

	// Another connection waits for one of the keys.
	require.Equal(t, false, c.lock("W", "b", nil)["acquired"])

	// A wrong or unknown lockUuid is refused and changes nothing, from
	// another connection too.
	for _, r := range []*lmRaw{a, c} {
		u := r.releaseMany("R0", "nope")
		assert.Equal(t, "release-many", u["type"])
		assert.Equal(t, "R0", u["uuid"])
		assert.Equal(t, false, u["released"])
		assert.NotEmpty(t, u["error"])
	}
	assert.Equal(t, false, c.releaseMany("R1", "M")["released"]) // not c's lock
	for _, k := range []string{"a", "b", "c"} {
		assert.Equal(t, []string{"livemutex:M"}, holders(t, b, k), k)
	}

	u := a.releaseMany("R2", "M")
	assert.Equal(t, map[string]any{"type": "release-many", "uuid": "R2", "lockUuid": "M",
		"keys": []any{"a", "b", "c"}, "released": true}, u)
	w := c.recv() // the waiter gets its key
	assert.Equal(t, "W", w["uuid"])
	assert.Equal(t, true, w["acquired"])
	for _, k := range []string{"a", "c"} {
		l, err := b.TryLock(ctx, k)
		require.NoError(t, err, k)
		require.NoError(t, l.Unlock(ctx))
	}
	// A second release-many of it is refused.
	assert.Equal(t, false, a.releaseMany("R3", "M")["released"])
}

func TestLiveMutexAcquireManyQueued(t *testing.T) {
	b := lmBroker(t, nil)
	a, c := lmPipe(t, b), lmPipe(t, b)
	require.Equal(t, true, c.lock("C", "y", nil)["acquired"])
	q := a.acquireMany("M", []string{"z", "y", "x"}, nil)
	assert.Equal(t, map[string]any{"type": "acquire-many", "uuid": "M", "keys": []any{"x", "y", "z"},
		"acquired": false, "contendedKey": "y", "lockRequestCount": 0.0}, q)
	// A retry of it is not queued twice.
	assert.Equal(t, false, a.acquireMany("M", []string{"x", "y", "z"}, nil)["acquired"])
	ki, err := b.Inspect(context.Background(), "y")
	require.NoError(t, err)
	assert.Len(t, ki.Waiters, 1)
	// Keys are taken in order, as LockAll takes them: x is held while y
	// waits; z is not asked yet.
	assert.Equal(t, []string{"livemutex:M"}, holders(t, b, "x"))
	assert.Empty(t, holders(t, b, "z"))

	require.Equal(t, true, c.unlock("U", "y", "C", false)["unlocked"])
	g := a.recv()
	assert.Equal(t, "M", g["uuid"])
	assert.Equal(t, true, g["acquired"])
	assert.Equal(t, []any{"x", "y", "z"}, g["keys"])
	assert.Len(t, g["fencingTokens"], 3)
	for _, k := range []string{"x", "y", "z"} {
		assert.Equal(t, []string{"livemutex:M"}, holders(t, b, k), k)
	}
	// A retry after the grant gets the grant again.
	assert.Equal(t, g, a.acquireMany("M", []string{"x", "y", "z"}, nil))
}

func TestLiveMutexAcquireManyTryFail(t *testing.T) {
	b := lmBroker(t, nil)
	ctx := context.Background()
	a, c := lmPipe(t, b), lmPipe(t, b)
	require.Equal(t, true, c.lock("C", "y", nil)["acquired"])
	f := a.acquireMany("M", []string{"x", "y", "z"}, map[string]any{"wait": false})
	assert.Equal(t, map[string]any{"type": "acquire-many", "uuid": "M", "keys": []any{"x", "y", "z"},
		"acquired": false, "contendedKey": "y", "lockRequestCount": 0.0}, f)
	// Nothing was kept nor queued.
	ki, err := b.Inspect(ctx, "y")
	require.NoError(t, err)
	assert.Empty(t, ki.Waiters)
	for _, k := range []string{"x", "z"} {
		assert.Empty(t, holders(t, b, k), k)
	}
	assert.Equal(t, false, a.releaseMany("R", "M")["released"])
	// With the key free, the try succeeds.
	require.Equal(t, true, c.unlock("U", "y", "C", false)["unlocked"])
	assert.Equal(t, true, a.acquireMany("M2", []string{"x", "y"}, map[string]any{"wait": false})["acquired"])
}

func TestLiveMutexAcquireManyAndGoLock(t *testing.T) {
	b := lmBroker(t, nil)
	ctx := context.Background()
	l, err := b.Lock(ctx, "k2")
	require.NoError(t, err)
	a := lmPipe(t, b)
	q := a.acquireMany("M", []string{"k1", "k2"}, nil)
	require.Equal(t, false, q["acquired"])
	assert.Equal(t, "k2", q["contendedKey"])
	require.NoError(t, l.Unlock(ctx))
	require.Equal(t, true, a.recv()["acquired"])

	// While the live-mutex lock holds them, a Go Lock of either key waits.
	_, err = b.TryLock(ctx, "k2")
	require.ErrorIs(t, err, lmx.ErrLocked)
	got := goLockQueued(t, b, "k1", 1)
	select {
	case <-got:
		t.Fatal("a Go Lock was granted a key acquire-many holds")
	default:
	}
	require.Equal(t, true, a.releaseMany("R", "M")["released"])
	unlockGranted(t, got)
}

func TestLiveMutexAcquireManyBadInput(t *testing.T) {
	b := lmBroker(t, nil)
	a := lmPipe(t, b)
	many := make([]string, 65)
	for i := range many {
		many[i] = fmt.Sprintf("k%02d", i)
	}
	for _, tc := range []struct {
		name  string
		keys  any
		extra map[string]any
		want  string
	}{
		{"empty", []string{}, nil, "`keys`"},
		{"null", nil, nil, "`keys`"},
		{"not strings", []any{"a", 1}, nil, "`keys`"},
		{"not an array", "a", nil, "`keys`"},
		{"empty key", []string{"a", ""}, nil, "empty key"},
		{"too many", many, nil, "at most 64 keys, got 65"},
		{"bad ttl", []string{"a"}, map[string]any{"ttl": "soon"}, "`ttl`"},
		{"no uuid", []string{"a"}, map[string]any{"uuid": ""}, "uuid"},
	} {
		r := a.acquireMany("E", tc.keys, tc.extra)
		assert.Equal(t, "acquire-many", r["type"], tc.name)
		assert.Equal(t, false, r["acquired"], tc.name)
		assert.Contains(t, r["error"], tc.want, tc.name)
	}
	ls := func() []any {
		a.sendJSON(map[string]any{"type": "ls", "uuid": "S"})
		return a.recv()["ls_result"].([]any)
	}
	assert.Empty(t, ls()) // no key was taken
	// 64 distinct keys are the most, counted after duplicates are dropped.
	g := a.acquireMany("OK", append(many[:64:64], many[0]), nil)
	assert.Equal(t, true, g["acquired"])
	assert.Len(t, g["keys"], 64)
	assert.Len(t, ls(), 64)
}

func TestLiveMutexAcquireManyDisconnect(t *testing.T) {
	b := lmBroker(t, nil)
	ctx := context.Background()
	a, c, d := lmPipe(t, b), lmPipe(t, b), lmPipe(t, b)
	require.Equal(t, true, a.acquireMany("M1", []string{"p", "q"}, nil)["acquired"])
	require.Equal(t, true, c.lock("C", "s", nil)["acquired"])
	require.Equal(t, "s", a.acquireMany("M2", []string{"r", "s"}, nil)["contendedKey"]) // queued, holding r
	require.Equal(t, false, d.lock("D", "p", nil)["acquired"])
	require.Equal(t, true, a.acquireMany("K", []string{"kept1", "kept2"},
		map[string]any{"ttl": 60000, "keepLocksAfterDeath": true})["acquired"])
	a.nc.Close()

	g := d.recv() // M1 released p and q
	assert.Equal(t, "D", g["uuid"])
	assert.Equal(t, true, g["acquired"])
	require.Eventually(t, func() bool {
		ki, err := b.Inspect(ctx, "r")
		return err == nil && len(ki.Holders) == 0
	}, frameWait, time.Millisecond)
	assert.Empty(t, holders(t, b, "q"))
	ki, err := b.Inspect(ctx, "s")
	require.NoError(t, err)
	assert.Empty(t, ki.Waiters) // M2 left the queue
	assert.Equal(t, []string{"livemutex:C"}, holders(t, b, "s"))

	// keepLocksAfterDeath with a TTL keeps the lock; any connection unlocks
	// its keys by lockUuid.
	for _, k := range []string{"kept1", "kept2"} {
		assert.Equal(t, []string{"livemutex:K"}, holders(t, b, k), k)
		assert.Equal(t, true, c.unlock("U"+k, k, "K", false)["unlocked"], k)
		assert.Empty(t, holders(t, b, k), k)
	}
}

func TestLiveMutexAcquireManyPartLost(t *testing.T) {
	b := lmBroker(t, nil)
	a, c := lmPipe(t, b), lmPipe(t, b)
	require.Equal(t, true, a.acquireMany("M", []string{"f1", "f2", "f3"}, nil)["acquired"])
	// A force unlock of one key ends the whole lock, as a part ends a
	// LockAll lease.
	require.Equal(t, true, c.unlock("F", "f2", "", true)["unlocked"])
	require.Eventually(t, func() bool {
		return len(holders(t, b, "f1")) == 0 && len(holders(t, b, "f3")) == 0
	}, frameWait, time.Millisecond)
	// Its release-many then succeeds, as a late unlock does.
	u := a.releaseMany("R", "M")
	assert.Equal(t, true, u["released"])
	assert.Equal(t, []any{"f1", "f2", "f3"}, u["keys"])
}

func TestLiveMutexAcquireManyTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := lmx.NewBroker(lmx.WithLogger(slog.New(slog.DiscardHandler)))
		defer b.Close()
		ctx := context.Background()
		a, c := lmPipe(t, b), lmPipe(t, b)
		require.Equal(t, true, a.acquireMany("M", []string{"t1", "t2"}, map[string]any{"ttl": 300})["acquired"])
		require.Equal(t, false, c.lock("W", "t2", map[string]any{"ttl": 1000})["acquired"])
		time.Sleep(301 * time.Millisecond)
		g := c.recv()
		assert.Equal(t, "W", g["uuid"])
		assert.Equal(t, true, g["acquired"])
		synctest.Wait()
		assert.Empty(t, holders(t, b, "t1"))
		assert.Equal(t, true, a.releaseMany("R", "M")["released"]) // expired: released, as a late unlock is

		// A queued request whose first key expires before it gets the
		// others fails, and gives back what it took.
		require.Equal(t, true, c.lock("H", "u2", nil)["acquired"])
		q := a.acquireMany("Q", []string{"u1", "u2"}, map[string]any{"ttl": 300})
		require.Equal(t, "u2", q["contendedKey"])
		time.Sleep(301 * time.Millisecond)
		f := a.recv()
		assert.Equal(t, "Q", f["uuid"])
		assert.Equal(t, false, f["acquired"])
		assert.Contains(t, f["error"], "u1")
		synctest.Wait()
		assert.Empty(t, holders(t, b, "u1"))
		ki, err := b.Inspect(ctx, "u2")
		require.NoError(t, err)
		assert.Empty(t, ki.Waiters)

		requireDefaultTTL(t, b, a, map[string]any{"type": "acquire-many", "uuid": "D", "keys": []string{"d1", "d2"}}, "d2")
		a.nc.Close()
		c.nc.Close()
		b.Close()
		synctest.Wait()
	})
}

// Connections taking random overlapping key sets with acquire-many, some
// of them with single locks, never hold a key together and never deadlock.
func TestLiveMutexAcquireManyHammer(t *testing.T) {
	b := lmBroker(t, nil)
	const conns, rounds, nkeys = 6, 40, 5
	inside := make([]atomic.Int32, nkeys)
	errs := make(chan error, conns)
	for w := range conns {
		c1, c2 := net.Pipe()
		b.ServeLiveMutexConn(c2)
		t.Cleanup(func() { c1.Close() })
		go func() {
			errs <- func() error {
				c1.SetDeadline(time.Now().Add(20 * frameWait))
				enc, dec := json.NewEncoder(c1), json.NewDecoder(c1)
				rng := rand.New(rand.NewPCG(uint64(w), 1))
				for i := range rounds {
					keys := hammerKeys(rng, nkeys)
					id := fmt.Sprintf("w%d-%d", w, i)
					single := len(keys) == 1 && w%2 == 0
					if err := hammerOnce(enc, dec, rng, id, keys, single, inside); err != nil {
						return err
					}
				}
				return nil
			}()
		}()
	}
	for range conns {
		require.NoError(t, <-errs)
	}
	for k := range nkeys {
		assert.Empty(t, holders(t, b, fmt.Sprintf("h%d", k)))
	}
}

// hammerKeys picks a random non-empty subset of the keys 0..n-1.
func hammerKeys(rng *rand.Rand, n int) []int {
	var keys []int
	for k := range n {
		if rng.IntN(2) == 0 {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		keys = []int{rng.IntN(n)}
	}
	return keys
}

// hammerOnce takes keys (named h0, h1, ... and asked in a shuffled order)
// with an acquire-many, or with a lock when single, checks that no other
// connection holds any of them while it does, and releases them.
func hammerOnce(enc *json.Encoder, dec *json.Decoder, rng *rand.Rand, id string, keys []int, single bool, inside []atomic.Int32) error {
	names := make([]string, len(keys))
	for j, k := range keys {
		names[j] = fmt.Sprintf("h%d", k)
	}
	rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	req := map[string]any{"type": "acquire-many", "uuid": id, "keys": names, "ttl": nil}
	if single {
		req = map[string]any{"type": "lock", "uuid": id, "key": names[0], "ttl": nil}
	}
	if err := enc.Encode(req); err != nil {
		return err
	}
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			return err
		}
		if m["error"] != nil {
			return fmt.Errorf("%s: %v", id, m["error"])
		}
		if m["acquired"] == true {
			break
		}
	}
	for _, k := range keys {
		if n := inside[k].Add(1); n != 1 {
			return fmt.Errorf("%s: key h%d held %d times", id, k, n)
		}
	}
	runtime.Gosched()
	for _, k := range keys {
		inside[k].Add(-1)
	}
	req = map[string]any{"type": "release-many", "uuid": "u" + id, "lockUuid": id}
	if single {
		req = map[string]any{"type": "unlock", "uuid": "u" + id, "key": names[0], "_uuid": id}
	}
	if err := enc.Encode(req); err != nil {
		return err
	}
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return err
	}
	if m["unlocked"] != true && m["released"] != true {
		return fmt.Errorf("%s: release: %v", id, m)
	}
	return nil
}
