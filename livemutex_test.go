package lmx_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// These tests speak live-mutex's NDJSON protocol line by line, as the Node
// client (or a broken one) would; livemutex_node_test.go drives the real
// Node client.

// An lmRaw is a raw live-mutex connection to a broker.
type lmRaw struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func lmPipe(t *testing.T, b *lmx.Broker) *lmRaw {
	t.Helper()
	c1, c2 := net.Pipe()
	b.ServeLiveMutexConn(c2)
	t.Cleanup(func() { c1.Close() })
	return &lmRaw{t: t, nc: c1, br: bufio.NewReader(c1)}
}

func (r *lmRaw) send(line string) {
	r.t.Helper()
	r.nc.SetWriteDeadline(time.Now().Add(frameWait))
	_, err := r.nc.Write([]byte(line + "\n"))
	require.NoError(r.t, err)
}

func (r *lmRaw) sendJSON(v map[string]any) {
	r.t.Helper()
	p, err := json.Marshal(v)
	require.NoError(r.t, err)
	r.send(string(p))
}

// recv reads one reply line.
func (r *lmRaw) recv() map[string]any {
	r.t.Helper()
	r.nc.SetReadDeadline(time.Now().Add(frameWait))
	line, err := r.br.ReadBytes('\n')
	require.NoError(r.t, err)
	var m map[string]any
	require.NoError(r.t, json.Unmarshal(line, &m), "line %q", line)
	return m
}

func (r *lmRaw) lock(uuid, key string, extra map[string]any) map[string]any {
	r.t.Helper()
	m := map[string]any{"type": "lock", "uuid": uuid, "key": key, "ttl": nil, "max": nil, "retryCount": 0, "pid": 1, "keepLocksAfterDeath": false}
	for k, v := range extra {
		m[k] = v
	}
	r.sendJSON(m)
	return r.recv()
}

func (r *lmRaw) unlock(uuid, key, lockID string, force bool) map[string]any {
	r.t.Helper()
	m := map[string]any{"type": "unlock", "uuid": uuid, "key": key, "force": force}
	if lockID != "" {
		m["_uuid"] = lockID
	}
	r.sendJSON(m)
	return r.recv()
}

func lmBroker(t testing.TB, logs *logBuffer) *lmx.Broker {
	t.Helper()
	var h slog.Handler = slog.DiscardHandler
	if logs != nil {
		h = slog.NewTextHandler(logs, nil)
	}
	b := lmx.NewBroker(lmx.WithLogger(slog.New(h)))
	t.Cleanup(func() { b.Close() })
	return b
}

func TestLiveMutexLockUnlockByID(t *testing.T) {
	b := lmBroker(t, nil)
	a := lmPipe(t, b)
	a.send(`{"type":"version","value":"0.2.25","max":null,"pid":1,"keepLocksAfterDeath":false}`)
	g := a.lock("L1", "orders", nil)
	assert.Equal(t, map[string]any{"type": "lock", "uuid": "L1", "key": "orders", "acquired": true,
		"lockRequestCount": 0.0, "readersCount": 0.0, "fencingToken": g["fencingToken"], "fencingTokenString": g["fencingTokenString"]}, g)
	assert.NotZero(t, g["fencingToken"])
	a.sendJSON(map[string]any{"type": "lock-received", "uuid": "L1", "key": "orders"})

	// A Go client of the same table is excluded.
	_, err := b.TryLock(context.Background(), "orders")
	require.ErrorIs(t, err, lmx.ErrLocked)

	u := a.unlock("U1", "orders", "L1", false)
	assert.Equal(t, true, u["unlocked"])
	assert.Equal(t, "U1", u["uuid"])
	assert.Equal(t, "orders", u["key"])
	l, err := b.TryLock(context.Background(), "orders")
	require.NoError(t, err)
	require.NoError(t, l.Unlock(context.Background()))
}

func TestLiveMutexQueueAndHandOff(t *testing.T) {
	b := lmBroker(t, nil)
	a, c := lmPipe(t, b), lmPipe(t, b)
	require.Equal(t, true, a.lock("A", "k", nil)["acquired"])
	q := c.lock("B", "k", nil)
	assert.Equal(t, false, q["acquired"])
	assert.Equal(t, "B", q["uuid"])
	assert.Equal(t, 0.0, q["lockRequestCount"])
	// A duplicate (a client retry) is not queued twice.
	assert.Equal(t, false, c.lock("B", "k", map[string]any{"retryCount": 1})["acquired"])
	ki, err := b.Inspect(context.Background(), "k")
	require.NoError(t, err)
	assert.Len(t, ki.Waiters, 1)

	// Wrong id: refused, the holder keeps the key.
	u := c.unlock("U0", "k", "nope", false)
	assert.Equal(t, false, u["unlocked"])
	assert.Equal(t, "You need to pass the correct uuid, or use force.", u["error"])
	// Neither id nor force: refused.
	assert.Equal(t, false, c.unlock("U0b", "k", "", false)["unlocked"])

	// lock-info names the real holder; ls lists the key.
	a.sendJSON(map[string]any{"type": "lock-info-request", "uuid": "I1", "key": "k"})
	info := a.recv()
	assert.Equal(t, []any{"A"}, info["lockholderUUIDs"])
	assert.Equal(t, true, info["isLocked"])
	assert.Equal(t, true, info["lockInfo"])
	assert.Equal(t, 1.0, info["lockRequestCount"])
	a.sendJSON(map[string]any{"type": "ls", "uuid": "S1"})
	assert.Equal(t, map[string]any{"uuid": "S1", "ls_result": []any{"k"}}, a.recv())

	assert.Equal(t, true, a.unlock("U1", "k", "A", false)["unlocked"])
	g := c.recv()
	assert.Equal(t, "B", g["uuid"])
	assert.Equal(t, true, g["acquired"])
}

func TestLiveMutexForceAndLateUnlock(t *testing.T) {
	b := lmBroker(t, nil)
	a, c := lmPipe(t, b), lmPipe(t, b)
	require.Equal(t, true, a.lock("A", "k", nil)["acquired"])
	require.Equal(t, false, a.lock("A2", "k", nil)["acquired"])
	u := c.unlock("F", "k", "", true) // from another connection
	assert.Equal(t, true, u["unlocked"])
	g := a.recv()
	assert.Equal(t, "A2", g["uuid"])
	assert.Equal(t, true, g["acquired"])
	// The evicted holder's late unlock succeeds and does not hurt A2.
	assert.Equal(t, true, a.unlock("U", "k", "A", false)["unlocked"])
	ki, err := b.Inspect(context.Background(), "k")
	require.NoError(t, err)
	require.Len(t, ki.Holders, 1)
	assert.Equal(t, "livemutex:A2", ki.Holders[0].Owner)
	// Unlock by id from another connection works.
	assert.Equal(t, true, c.unlock("U2", "k", "A2", false)["unlocked"])
	// An unknown key: unlocked, with live-mutex's warning.
	w := c.unlock("U3", "nothing", "x", false)
	assert.Equal(t, true, w["unlocked"])
	assert.Contains(t, w["warning"], "no lock with key")
}

func TestLiveMutexSemaphore(t *testing.T) {
	b := lmBroker(t, nil)
	a := lmPipe(t, b)
	for i, want := range []bool{true, true, true, false} {
		g := a.lock(string(rune('a'+i)), "pool", map[string]any{"max": 3})
		assert.Equal(t, want, g["acquired"], "request %d", i)
	}
	// max null joins the key's limit instead of failing.
	assert.Equal(t, false, a.lock("e", "pool", nil)["acquired"])
	// A different explicit max is refused.
	assert.Contains(t, a.lock("f", "pool", map[string]any{"max": 5})["error"], "limit")
	// Bad max.
	assert.Contains(t, a.lock("g", "other", map[string]any{"max": 0})["error"], "max")
	a.sendJSON(map[string]any{"type": "unlock", "uuid": "u", "key": "pool", "_uuid": "b"})
	byType := map[any]map[string]any{}
	for range 2 { // the hand-off's grant and the unlock's reply, in any order
		m := a.recv()
		byType[m["type"]] = m
	}
	assert.Equal(t, true, byType["unlock"]["unlocked"])
	assert.Equal(t, "d", byType["lock"]["uuid"])
	assert.Equal(t, true, byType["lock"]["acquired"])
}

func TestLiveMutexDisconnectReleasesOnlyOwn(t *testing.T) {
	b := lmBroker(t, nil)
	a, c, d := lmPipe(t, b), lmPipe(t, b), lmPipe(t, b)
	ctx := context.Background()
	require.Equal(t, true, a.lock("A", "mine", nil)["acquired"])
	require.Equal(t, true, c.lock("C", "theirs", nil)["acquired"])
	require.Equal(t, false, c.lock("C2", "mine", nil)["acquired"])
	require.Equal(t, false, d.lock("D", "mine", nil)["acquired"])
	c.nc.Close() // the 0.2.25 broker released every lock here
	require.Eventually(t, func() bool {
		ki, err := b.Inspect(ctx, "theirs")
		return err == nil && len(ki.Holders) == 0
	}, frameWait, time.Millisecond)
	ki, err := b.Inspect(ctx, "mine")
	require.NoError(t, err)
	require.Len(t, ki.Holders, 1)
	assert.Equal(t, "livemutex:A", ki.Holders[0].Owner)
	assert.Len(t, ki.Waiters, 1) // D only: C2 left with its connection
	assert.Equal(t, true, a.unlock("U", "mine", "A", false)["unlocked"])
	assert.Equal(t, "D", d.recv()["uuid"])
}

func TestLiveMutexBadInput(t *testing.T) {
	var logs logBuffer
	b := lmBroker(t, &logs)
	a, other := lmPipe(t, b), lmPipe(t, b)
	require.Equal(t, true, other.lock("O", "k", nil)["acquired"])
	a.send("")
	a.send("   ")
	a.send("not json at all")
	a.send(`garbage{"type":"lock","uuid":"X","key":"k"}`)
	a.send(`{"type":"lock","uuid":`)
	a.send(`[1,2,3]`)
	// An oversized line is skipped whole; the connection lives on.
	a.send(`{"type":"lock","uuid":"huge","key":"` + strings.Repeat("x", lmx.MaxLiveMutexLine+10) + `"}`)
	a.sendJSON(map[string]any{"type": "no-such-type", "uuid": "T", "key": "k"})
	m := a.recv()
	assert.Equal(t, "Malformed data sent to Live-Mutex broker.", m["error"])
	assert.Equal(t, "T", m["uuid"])
	// Unlocks of another's key by guesswork change nothing.
	assert.Equal(t, false, a.unlock("U", "k", "guess", false)["unlocked"])
	assert.Contains(t, a.lock("E", "", nil)["error"], "empty key")
	a.sendJSON(map[string]any{"type": "ping", "uuid": "P", "timestamp": 5})
	p := a.recv()
	assert.Equal(t, "pong", p["type"])
	assert.Equal(t, 5.0, p["timestamp"])
	ki, err := b.Inspect(context.Background(), "k")
	require.NoError(t, err)
	require.Len(t, ki.Holders, 1)
	assert.Equal(t, "livemutex:O", ki.Holders[0].Owner)
	assert.Contains(t, logs.String(), "not a JSON object")
	assert.Contains(t, logs.String(), "line too long")
}

func TestLiveMutexSplitLines(t *testing.T) {
	b := lmBroker(t, nil)
	a := lmPipe(t, b)
	line := `{"type":"lock","uuid":"S","key":"split","ttl":null}` + "\n"
	for i := range len(line) {
		a.nc.SetWriteDeadline(time.Now().Add(frameWait))
		_, err := a.nc.Write([]byte{line[i]})
		require.NoError(t, err)
	}
	assert.Equal(t, true, a.recv()["acquired"])
}

func TestLiveMutexVersionMismatch(t *testing.T) {
	b := lmBroker(t, nil)
	a := lmPipe(t, b)
	a.send(`{"type":"version","value":"0.2.1"}`) // compatible: no reply
	a.send(`{"type":"version","value":"1.0.0"}`)
	m := a.recv()
	assert.Equal(t, "version-mismatch", m["type"])
	assert.Equal(t, map[string]any{"clientVersion": "1.0.0", "brokerVersion": lmx.LiveMutexVersion}, m["versions"])
	a.send(`{"type":"lock","uuid":"L","key":"k"}`) // ignored
	a.send(`{"type":"version-mismatch-confirmed"}`)
	a.nc.SetReadDeadline(time.Now().Add(frameWait))
	_, err := a.br.ReadByte()
	require.Error(t, err) // the broker hung up without answering the lock
	_, err = b.TryLock(context.Background(), "k")
	require.NoError(t, err)
}

func TestLiveMutexTTLPerHolder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := lmx.NewBroker(lmx.WithLogger(slog.New(slog.DiscardHandler)))
		defer b.Close()
		a, c := lmPipe(t, b), lmPipe(t, b)
		require.Equal(t, true, a.lock("short", "sem", map[string]any{"max": 2, "ttl": 300})["acquired"])
		require.Equal(t, true, a.lock("long", "sem", map[string]any{"max": 2, "ttl": 5000})["acquired"])
		require.Equal(t, false, c.lock("w", "sem", map[string]any{"ttl": 1000})["acquired"])
		time.Sleep(301 * time.Millisecond)
		g := c.recv()
		assert.Equal(t, "w", g["uuid"])
		assert.Equal(t, true, g["acquired"])
		ki, err := b.Inspect(context.Background(), "sem")
		require.NoError(t, err)
		assert.Len(t, ki.Holders, 2) // "long" kept its own TTL
		requireDefaultTTL(t, b, a, map[string]any{"type": "lock", "uuid": "d", "key": "dflt"}, "dflt")
		a.nc.Close()
		c.nc.Close()
		b.Close()
		synctest.Wait()
	})
}

// requireDefaultTTL sends req, a lock request without a ttl, and requires
// that key was granted with live-mutex's default TTL of 5s.
func requireDefaultTTL(t *testing.T, b *lmx.Broker, a *lmRaw, req map[string]any, key string) {
	t.Helper()
	a.sendJSON(req)
	require.Equal(t, true, a.recv()["acquired"])
	ki, err := b.Inspect(context.Background(), key)
	require.NoError(t, err)
	assert.Equal(t, 5*time.Second, time.Until(ki.Holders[0].Expires).Round(time.Second))
}

func TestLiveMutexKeepLocksAfterDeath(t *testing.T) {
	b := lmBroker(t, nil)
	ctx := context.Background()
	a := lmPipe(t, b)
	require.Equal(t, true, a.lock("K", "kept", map[string]any{"ttl": 60000, "keepLocksAfterDeath": true})["acquired"])
	require.Equal(t, true, a.lock("N", "notkept", map[string]any{"ttl": nil, "keepLocksAfterDeath": true})["acquired"])
	a.nc.Close()
	require.Eventually(t, func() bool {
		ki, err := b.Inspect(ctx, "notkept")
		return err == nil && len(ki.Holders) == 0
	}, frameWait, time.Millisecond)
	ki, err := b.Inspect(ctx, "kept")
	require.NoError(t, err)
	require.Len(t, ki.Holders, 1)
	// Another connection releases it by its id.
	c := lmPipe(t, b)
	assert.Equal(t, true, c.unlock("U", "kept", "K", false)["unlocked"])
	ki, err = b.Inspect(ctx, "kept")
	require.NoError(t, err)
	assert.Empty(t, ki.Holders)
}

func TestLiveMutexAndGoClientShareQueue(t *testing.T) {
	b := lmBroker(t, nil)
	ctx := context.Background()
	l, err := b.Lock(ctx, "shared")
	require.NoError(t, err)
	a := lmPipe(t, b)
	require.Equal(t, false, a.lock("A", "shared", nil)["acquired"])
	got := goLockQueued(t, b, "shared", 2)
	require.NoError(t, l.Unlock(ctx))
	assert.Equal(t, "A", a.recv()["uuid"]) // FIFO: the live-mutex waiter first
	assert.Equal(t, true, a.unlock("U", "shared", "A", false)["unlocked"])
	unlockGranted(t, got)
}

// goLockQueued starts a Go Lock of key on b and waits until key has
// waiters waiters, that Lock among them. The lease comes on the channel.
func goLockQueued(t *testing.T, b *lmx.Broker, key string, waiters int) <-chan *lmx.Lease {
	t.Helper()
	ctx := context.Background()
	got := make(chan *lmx.Lease, 1)
	go func() {
		if l, err := b.Lock(ctx, key); err == nil {
			got <- l
		}
	}()
	require.Eventually(t, func() bool {
		ki, _ := b.Inspect(ctx, key)
		return len(ki.Waiters) == waiters
	}, frameWait, time.Millisecond)
	return got
}

// unlockGranted unlocks the lease that comes on got, failing the test if
// none comes within frameWait.
func unlockGranted(t *testing.T, got <-chan *lmx.Lease) {
	t.Helper()
	select {
	case l := <-got:
		require.NoError(t, l.Unlock(context.Background()))
	case <-time.After(frameWait):
		t.Fatal("the Go waiter was not granted")
	}
}

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
	var inside [nkeys]atomic.Int32
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
					var keys []int
					for k := range nkeys {
						if rng.IntN(2) == 0 {
							keys = append(keys, k)
						}
					}
					if len(keys) == 0 {
						keys = []int{rng.IntN(nkeys)}
					}
					names := make([]string, len(keys))
					for j, k := range keys {
						names[j] = fmt.Sprintf("h%d", k)
					}
					rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
					id := fmt.Sprintf("w%d-%d", w, i)
					single := len(names) == 1 && w%2 == 0
					var req map[string]any
					if single {
						req = map[string]any{"type": "lock", "uuid": id, "key": names[0], "ttl": nil}
					} else {
						req = map[string]any{"type": "acquire-many", "uuid": id, "keys": names, "ttl": nil}
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
					if single {
						req = map[string]any{"type": "unlock", "uuid": "u" + id, "key": names[0], "_uuid": id}
					} else {
						req = map[string]any{"type": "release-many", "uuid": "u" + id, "lockUuid": id}
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

// A lock with max null takes the key's own limit in one ask of the table:
// a key whose limit changes under it (here, a Go holder of limit 2 comes
// and goes) never makes it fail with a limit mismatch, as a first ask with
// limit 1, a look at the key, and a second ask could.
func TestLiveMutexMaxNullAskedOnce(t *testing.T) {
	b := lmBroker(t, nil)
	ctx := context.Background()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if l, err := b.TryLock(ctx, "mn", lmx.Limit(2)); err == nil {
				l.Unlock(ctx)
			}
		}
	}()
	defer func() {
		close(stop)
		<-done
	}()
	a := lmPipe(t, b)
	for i := range 3000 {
		id := fmt.Sprintf("m%d", i)
		g := a.lock(id, "mn", map[string]any{"max": nil})
		require.NotContains(t, g, "error", "lock %d", i)
		for g["acquired"] != true {
			g = a.recv()
			require.NotContains(t, g, "error", "lock %d", i)
		}
		require.Equal(t, true, a.unlock("u"+id, "mn", id, false)["unlocked"])
	}
}
