package lmx_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"strings"
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
