package lmx_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/oklog/ulid/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The hand-off frames, from PROTOCOL.md.
const (
	opRelease byte = 0x03
	opStopped byte = 0x0c
	opOK      byte = 0x83
	opEnded   byte = 0x85
	opNext    byte = 0x8c
	opStop    byte = 0x8d
)

// expectFrame reads a frame and requires its op and request id.
func expectFrame(t *testing.T, nc net.Conn, op byte, id uint32) wireFrame {
	t.Helper()
	f := readFrame(t, nc)
	require.Equal(t, op, f.op, "got %v", f)
	require.Equal(t, id, f.id, "got %v", f)
	return f
}

// grant decodes the lock id and token that open a Granted frame.
func grant(t *testing.T, f wireFrame) (ulid.ULID, uint64) {
	t.Helper()
	require.Greater(t, len(f.payload), 16)
	token, n := binary.Uvarint(f.payload[16:])
	require.Positive(t, n)
	return ulid.ULID(f.payload[:16]), token
}

// next decodes a Next frame: the lease it follows, its lock id and token.
func next(t *testing.T, f wireFrame) (pred, id ulid.ULID, token uint64) {
	t.Helper()
	require.Greater(t, len(f.payload), 32)
	token, n := binary.Uvarint(f.payload[32:])
	require.Equal(t, len(f.payload)-32, n, "a Next frame is two ids and a token")
	return ulid.ULID(f.payload[:16]), ulid.ULID(f.payload[16:32]), token
}

// stopSeq decodes a Stop frame about key and returns its number.
func stopSeq(t *testing.T, f wireFrame, key string) uint64 {
	t.Helper()
	k := appendStr(nil, key)
	require.Greater(t, len(f.payload), len(k))
	require.Equal(t, k, f.payload[:len(k)], "the Stop is about another key")
	seq, n := binary.Uvarint(f.payload[len(k):])
	require.Equal(t, len(f.payload)-len(k), n)
	return seq
}

func releasePayload(key string, id ulid.ULID) []byte { return append(appendStr(nil, key), id[:]...) }

func stoppedPayload(key string, seq uint64) []byte {
	return binary.AppendUvarint(appendStr(nil, key), seq)
}

// A session's waiters queued behind its own lease are named to it with the
// id and token of their grants, each following the one before; the broker
// grants them so on Release, honours them after a Stop until the client
// answers it, and then lets the waiter of higher priority that asked for
// the Stop go first.
func TestProtocolHandOff(t *testing.T) {
	b := lmx.NewBroker()
	defer b.Close()
	nc := servePipe(b)
	handshake(t, nc, "")

	writeFrame(t, nc, opLock, flagWait, 1, lockPayload("k"))
	l1, t1 := grant(t, expectFrame(t, nc, opGranted, 1))
	ids, tokens := []ulid.ULID{l1}, []uint64{t1}
	for id := uint32(2); id <= 3; id++ {
		writeFrame(t, nc, opLock, flagWait, id, lockPayload("k"))
		pred, lid, token := next(t, expectFrame(t, nc, opNext, id))
		assert.Equal(t, ids[len(ids)-1], pred, "Lock %d does not follow the one before", id)
		assert.Greater(t, token, tokens[len(tokens)-1])
		ids, tokens = append(ids, lid), append(tokens, token)
	}

	release := func(reqID uint32, lease ulid.ULID, grantedReq uint32, granted int) {
		t.Helper()
		writeFrame(t, nc, opRelease, 0, reqID, releasePayload("k", lease))
		if grantedReq != 0 {
			id, token := grant(t, expectFrame(t, nc, opGranted, grantedReq))
			assert.Equal(t, ids[granted], id, "the grant is not the lease named")
			assert.Equal(t, tokens[granted], token)
		}
		expectFrame(t, nc, opOK, reqID)
	}
	release(4, ids[0], 2, 1)

	writeFrame(t, nc, opLock, flagWait, 5, lockPayload("k"))
	pred, lid, token := next(t, expectFrame(t, nc, opNext, 5))
	assert.Equal(t, ids[2], pred)
	ids, tokens = append(ids, lid), append(tokens, token)

	// A Lock of higher priority from another session stops the names.
	other := servePipe(b)
	handshake(t, other, "")
	hi := appendStr(nil, "k")
	hi = binary.AppendUvarint(hi, 0) // ttl
	hi = binary.AppendUvarint(hi, 1) // limit
	hi = binary.AppendVarint(hi, 10) // priority
	hi = appendStr(hi, "")           // owner
	writeFrame(t, other, opLock, flagWait, 1, hi)
	seq := stopSeq(t, expectFrame(t, nc, opStop, 0), "k")
	require.NotZero(t, seq)

	// Until the answer, the names hold: the client may have handed on.
	// An answer with another number changes nothing, nor does a malformed
	// one, which is told so.
	writeFrame(t, nc, opStopped, 0, 0, stoppedPayload("k", seq+1))
	writeFrame(t, nc, opStopped, 0, 0, append(stoppedPayload("k", seq), 0))
	requireErrorFrame(t, readFrame(t, nc), codeProtocol, 0)
	release(6, ids[1], 3, 2)

	writeFrame(t, nc, opStopped, 0, 0, stoppedPayload("k", seq))
	ping(t, nc, 7)
	release(8, ids[2], 0, 0) // the Lock named earlier waits behind the higher priority
	bid, btoken := grant(t, expectFrame(t, other, opGranted, 1))
	assert.Greater(t, btoken, tokens[3])

	writeFrame(t, other, opRelease, 0, 2, releasePayload("k", bid))
	expectFrame(t, other, opOK, 2)
	id5, token5 := grant(t, expectFrame(t, nc, opGranted, 5))
	assert.NotEqual(t, ids[3], id5, "a name dropped by Stop was granted as named")
	assert.Greater(t, token5, btoken, "tokens of the key went back")
}

// gatedConn holds a client's writes while its gate is shut.
type gatedConn struct {
	net.Conn
	mu   sync.Mutex
	shut chan struct{}
}

func (g *gatedConn) Write(p []byte) (int, error) {
	g.mu.Lock()
	shut := g.shut
	g.mu.Unlock()
	if shut != nil {
		<-shut
	}
	return g.Conn.Write(p)
}

func (g *gatedConn) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.shut = make(chan struct{})
}

func (g *gatedConn) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	close(g.shut)
	g.shut = nil
}

// dialPipe returns a client of b over a net.Pipe, through conn if set.
func dialPipe(t *testing.T, b *lmx.Broker, conn *gatedConn) *lmx.Client {
	t.Helper()
	c, err := lmx.Dial(context.Background(), "pipe:0", lmx.WithDialer(func(context.Context, string, string) (net.Conn, error) {
		nc := servePipe(b)
		if conn == nil {
			return nc, nil
		}
		conn.Conn = nc
		return conn, nil
	}))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// holding starts a broker and a client of it, through gate if set, that
// holds "k".
func holding(t *testing.T, gate *gatedConn) (*lmx.Broker, *lmx.Client, *lmx.Lease) {
	t.Helper()
	b := lmx.NewBroker()
	t.Cleanup(func() { b.Close() })
	c := dialPipe(t, b, gate)
	h, err := c.Lock(t.Context(), "k")
	require.NoError(t, err)
	return b, c, h
}

// unlockLater unlocks l on a goroutine of its own, whose answer it returns.
func unlockLater(t *testing.T, l *lmx.Lease) <-chan error {
	unlocked := make(chan error, 1)
	go func() { unlocked <- l.Unlock(t.Context()) }()
	return unlocked
}

// A goroutine's Unlock hands the key to the next Lock of the same client
// before the broker has heard of the Release, with the lease the broker
// grants it when it does.
func TestClientHandOffWithoutRoundTrip(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := t.Context()
		var gate gatedConn
		b, c, h := holding(t, &gate)
		got := make(chan *lmx.Lease, 1)
		go func() {
			l, err := c.Lock(ctx, "k")
			assert.NoError(t, err)
			got <- l
		}()
		synctest.Wait() // queued, and named to the client
		gate.hold()
		unlocked := unlockLater(t, h)
		synctest.Wait()
		var w *lmx.Lease
		select {
		case w = <-got:
		default:
			t.Fatal("the next Lock waits for the broker's answer")
		}
		ki, err := b.Inspect(ctx, "k")
		require.NoError(t, err)
		require.Len(t, ki.Holders, 1)
		require.Equal(t, h.ID(), ki.Holders[0].ID, "the Release reached the broker: the test proves nothing")

		gate.open()
		require.NoError(t, <-unlocked)
		synctest.Wait()
		ki, err = b.Inspect(ctx, "k")
		require.NoError(t, err)
		require.Len(t, ki.Holders, 1)
		assert.Equal(t, w.ID(), ki.Holders[0].ID)
		assert.Equal(t, w.Token(), ki.Holders[0].Token)
		assert.Greater(t, w.Token(), h.Token())
		assert.NoError(t, w.Err())
		require.NoError(t, w.Unlock(ctx))
		requireIdle(t, b)
	})
}

// requireIdle requires that b holds and queues nothing.
func requireIdle(t *testing.T, b *lmx.Broker) {
	t.Helper()
	st, err := b.Stats(t.Context())
	require.NoError(t, err)
	assert.Zero(t, st.Holders, "holders left")
	assert.Zero(t, st.Waiters, "waiters left")
}

// grantLog records the order in which Locks are granted.
type grantLog struct {
	mu     sync.Mutex
	names  []string
	tokens []uint64
	errs   []error
}

// lock starts a Lock of key that records name once granted and unlocks at
// once, and waits until it is queued.
func (g *grantLog) lock(t *testing.T, c *lmx.Client, name string, opts ...lmx.LockOption) {
	go func() {
		l, err := c.Lock(t.Context(), "k", opts...)
		g.mu.Lock()
		if err == nil {
			g.names, g.tokens = append(g.names, name), append(g.tokens, l.Token())
		}
		g.mu.Unlock()
		if err == nil {
			err = l.Unlock(t.Context())
		}
		if err != nil {
			g.mu.Lock()
			g.errs = append(g.errs, fmt.Errorf("%s: %w", name, err))
			g.mu.Unlock()
		}
	}()
	synctest.Wait()
}

func (g *grantLog) check(t *testing.T, want ...string) {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	assert.Empty(t, g.errs)
	assert.Equal(t, want, g.names, "grant order")
	for i := 1; i < len(g.tokens); i++ {
		assert.Greater(t, g.tokens[i], g.tokens[i-1], "tokens of the key went back")
	}
}

// Hand-offs inside a client keep the queue's order across clients: a
// waiter of another client between two of this one's is granted between
// them.
func TestClientHandOffKeepsFIFO(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, a, h := holding(t, nil)
		x := dialPipe(t, b, nil)
		var g grantLog
		g.lock(t, a, "a1")
		g.lock(t, x, "x")
		g.lock(t, a, "a2")
		g.lock(t, a, "a3")
		require.NoError(t, h.Unlock(t.Context()))
		synctest.Wait()
		g.check(t, "a1", "x", "a2", "a3")
		requireIdle(t, b)
	})
}

// A waiter of higher priority, and one that preempts, go ahead of the
// waiters named to the holder's client, as they would without names.
func TestClientHandOffYieldsToPriority(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, a, h := holding(t, nil)
		p := dialPipe(t, b, nil)
		var g grantLog
		g.lock(t, a, "a1")
		g.lock(t, a, "a2")
		g.lock(t, p, "p", lmx.Priority(10), lmx.Preempt(time.Minute))
		select {
		case <-h.Revoked():
		default:
			t.Fatal("the preempting waiter did not reach the head of the queue")
		}
		ki, err := b.Inspect(t.Context(), "k")
		require.NoError(t, err)
		require.Len(t, ki.Waiters, 3)
		assert.Equal(t, 10, ki.Waiters[0].Priority)
		require.NoError(t, h.Unlock(t.Context()))
		synctest.Wait()
		g.check(t, "p", "a1", "a2")
		requireIdle(t, b)
	})
}

// A named Lock whose ctx ends leaves the chain: the key goes on to the one
// behind it, still without waiting for the broker, and nothing is left held
// or queued.
func TestClientHandOffSkipsCancelled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var gate gatedConn
		b, a, h := holding(t, &gate)
		var g grantLog
		g.lock(t, a, "a1")
		ctx, cancel := context.WithCancel(t.Context())
		cancelled := make(chan error, 1)
		go func() {
			_, err := a.Lock(ctx, "k")
			cancelled <- err
		}()
		synctest.Wait()
		g.lock(t, a, "a3")
		cancel()
		require.ErrorIs(t, <-cancelled, context.Canceled)
		synctest.Wait()
		gate.hold()
		unlocked := unlockLater(t, h)
		synctest.Wait()
		g.check(t, "a1", "a3")
		gate.open()
		require.NoError(t, <-unlocked)
		synctest.Wait()
		requireIdle(t, b)
	})
}

// Three clients' goroutines, some of higher priority and some that give up
// waiting, share one key: whatever the hand-offs, one holder at a time, in
// strictly increasing token order, and nothing is left at the end.
func TestClientHandOffStress(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := lmx.NewBroker()
		defer b.Close()
		const clients, goroutines, rounds = 3, 8, 40
		var (
			wg        sync.WaitGroup
			mu        sync.Mutex
			inside    int
			lastToken uint64
			grants    int
		)
		for c := range clients {
			cl := dialPipe(t, b, nil)
			for g := range goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rnd := rand.New(rand.NewPCG(uint64(c), uint64(g)))
					for r := range rounds {
						var opts []lmx.LockOption
						if (g+r)%5 == 0 {
							opts = append(opts, lmx.Priority(5))
						}
						ctx, cancel := context.WithCancel(t.Context())
						if r%3 == 0 {
							ctx, cancel = context.WithTimeout(t.Context(), time.Duration(rnd.IntN(300))*time.Microsecond)
						}
						l, err := cl.Lock(ctx, "k", opts...)
						cancel()
						if err != nil {
							assert.ErrorIs(t, err, context.DeadlineExceeded)
							continue
						}
						mu.Lock()
						inside++
						assert.Equal(t, 1, inside, "two holders at once")
						assert.Greater(t, l.Token(), lastToken, "tokens went back")
						lastToken = l.Token()
						grants++
						mu.Unlock()
						time.Sleep(time.Duration(rnd.IntN(50)) * time.Microsecond)
						mu.Lock()
						inside--
						mu.Unlock()
						assert.NoError(t, l.Unlock(t.Context()))
					}
				}()
			}
		}
		wg.Wait()
		synctest.Wait()
		assert.Greater(t, grants, clients*goroutines*rounds/2, "most Locks should have been granted")
		requireIdle(t, b)
	})
}

// A named Lock cancelled while the lease it follows is released: the client
// must not hand the key past it unless the broker reads its Cancel before
// the Release. Were the Release read first, the broker would grant the
// cancelled Lock, and the Unlock of the Lock the client handed the key to
// instead would find its lease not yet granted: ErrNotHeld, and the key left
// held by the client. Each round races the Cancel against the Release.
func TestClientHandOffRacesCancel(t *testing.T) {
	b, c, h := holding(t, nil)
	ctx := t.Context()
	for range 300 {
		cctx, cancel := context.WithCancel(ctx)
		cancelled, after := make(chan error, 1), make(chan error, 1)
		lockUnlock := func(ctx context.Context, answer chan<- error) {
			l, err := c.Lock(ctx, "k")
			if err == nil {
				err = l.Unlock(t.Context())
			}
			answer <- err
		}
		go lockUnlock(cctx, cancelled)
		waitWaiters(t, b, "k", 1)
		go lockUnlock(ctx, after)
		waitWaiters(t, b, "k", 2)
		unlocked := unlockLater(t, h)
		cancel()
		require.NoError(t, <-unlocked)
		if err := <-cancelled; err != nil {
			require.ErrorIs(t, err, context.Canceled)
		}
		require.NoError(t, <-after, "the Lock after the cancelled one")
		var err error
		h, err = c.Lock(ctx, "k")
		require.NoError(t, err)
	}
	require.NoError(t, h.Unlock(ctx))
	requireIdle(t, b)
}

// waitWaiters waits until key has n waiters at b. Unlike waitFor it does
// not sleep between looks: TestClientHandOffRacesCancel meets its race in
// every run when it goes on at once, and in about 6 of 10 after a sleep.
// It is bounded by time, not by a count of looks, which a machine busy
// with other tests used up before the Lock reached the broker.
func waitWaiters(t *testing.T, b *lmx.Broker, key string, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		ki, err := b.Inspect(t.Context(), key)
		require.NoError(t, err)
		if len(ki.Waiters) == n {
			return
		}
		runtime.Gosched()
	}
	t.Fatalf("%s never had %d waiters", key, n)
}
