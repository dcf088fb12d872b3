package lmx_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/lmx-go/lmx/locktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pipeClient returns a client talking to a new broker over net.Pipe, which a
// synctest bubble can hold.
func pipeClient(t testing.TB, opts ...lmx.BrokerOption) (*lmx.Client, *lmx.Broker) {
	b := lmx.NewBroker(opts...)
	dial := func(context.Context, string, string) (net.Conn, error) {
		c1, c2 := net.Pipe()
		b.ServeConn(c2)
		return c1, nil
	}
	c, err := lmx.Dial(context.Background(), "pipe:0", lmx.WithDialer(dial))
	require.NoError(t, err)
	t.Cleanup(func() {
		c.Close()
		b.Close()
	})
	return c, b
}

// listen starts a broker listening on network and returns its address as
// Dial takes it.
func listen(t testing.TB, network string, opts ...lmx.BrokerOption) (string, *lmx.Broker) {
	b := lmx.NewBroker(opts...)
	t.Cleanup(func() { b.Close() })
	switch network {
	case "unix":
		path := socketPath(t)
		_, err := b.Listen("unix", path)
		require.NoError(t, err)
		return "unix://" + path, b
	default:
		addr, err := b.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		return "tcp://" + addr.String(), b
	}
}

// socketPath returns a short path for a Unix socket: test temp dirs can pass
// the 108-byte limit of socket paths.
func socketPath(t testing.TB) string {
	dir, err := os.MkdirTemp("", "lmx")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "lmx.sock")
}

func dialer(network string) locktest.Factory {
	return func(t testing.TB) lmx.Locker {
		addr, _ := listen(t, network)
		c, err := lmx.Dial(context.Background(), addr)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
}

func TestClientConformance(t *testing.T) {
	t.Run("Pipe", func(t *testing.T) {
		locktest.Run(t, func(t testing.TB) lmx.Locker {
			c, _ := pipeClient(t)
			return c
		})
	})
	t.Run("TCP", func(t *testing.T) { locktest.Run(t, dialer("tcp"), locktest.RealTime(0)) })
	t.Run("Unix", func(t *testing.T) { locktest.Run(t, dialer("unix"), locktest.RealTime(0)) })
}

func TestClientPing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, _ := pipeClient(t)
		require.NoError(t, c.Ping(context.Background()))
		require.NoError(t, c.Close())
		require.ErrorIs(t, c.Ping(context.Background()), lmx.ErrClosed)
	})
}

// TestClientReadRole follows the read role between a client's callers and
// its background reader: a caller waiting for a grant reads the others'
// replies, a cancelled one hands the role on, and an idle client still
// learns at once that a lease has ended.
func TestClientReadRole(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		c, b := pipeClient(t)
		local, err := b.Lock(ctx, "k")
		require.NoError(t, err)

		// A cancelled queued Lock, alone, held the role: it hands it on.
		cctx, cancel := context.WithCancel(ctx)
		cancelled := make(chan error, 1)
		go func() {
			_, err := c.Lock(cctx, "k")
			cancelled <- err
		}()
		synctest.Wait()
		cancel()
		require.ErrorIs(t, <-cancelled, context.Canceled)
		require.NoError(t, c.Ping(ctx))

		// A queued Lock holds the role; a Ping's pong is read for it.
		granted := make(chan *lmx.Lease, 1)
		go func() {
			l, err := c.Lock(ctx, "k")
			assert.NoError(t, err)
			granted <- l
		}()
		synctest.Wait()
		require.NoError(t, c.Ping(ctx))

		require.NoError(t, local.Unlock(ctx))
		l := <-granted
		require.NotNil(t, l)

		// Idle past idleRead, the background reader holds the role: a
		// forced end reaches the lease, and a new call takes the role back.
		time.Sleep(10 * time.Millisecond)
		require.NoError(t, b.ForceUnlock(ctx, "k"))
		time.Sleep(10 * time.Millisecond)
		select {
		case <-l.Done():
			require.ErrorIs(t, l.Err(), lmx.ErrForced)
		default:
			t.Fatal("the forced end did not reach the idle client")
		}
		l2, err := c.Lock(ctx, "k")
		require.NoError(t, err)
		require.NoError(t, l2.Unlock(ctx))
	})
}

// TestClientIdleAfterBurst: after a burst of calls, during which the idle
// checks found the read role busy and waited longer each time, a lease's
// end still reaches the then idle client within 100ms; once its background
// reader holds the role, an end reaches it at once.
func TestClientIdleAfterBurst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		c, b := pipeClient(t)
		for range 50 { // each Lock waits 3ms for a local holder, its caller reading
			local, err := b.Lock(ctx, "burst")
			require.NoError(t, err)
			go func() {
				time.Sleep(3 * time.Millisecond)
				local.Unlock(ctx)
			}()
			l, err := c.Lock(ctx, "burst")
			require.NoError(t, err)
			require.NoError(t, l.Unlock(ctx))
		}
		ended := func() time.Duration {
			l, err := c.Lock(ctx, "k")
			require.NoError(t, err)
			time.Sleep(200 * time.Microsecond) // the client is idle
			require.NoError(t, b.ForceUnlock(ctx, "k"))
			start := time.Now()
			<-l.Done()
			require.ErrorIs(t, l.Err(), lmx.ErrForced)
			return time.Since(start)
		}
		d := ended()
		assert.Greater(t, d, time.Millisecond, "the burst did not lengthen the idle checks")
		assert.LessOrEqual(t, d, 100*time.Millisecond)

		time.Sleep(10 * time.Millisecond) // idle: the background reader takes the role
		l, err := c.Lock(ctx, "k")
		require.NoError(t, err)
		time.Sleep(10 * time.Millisecond)
		require.NoError(t, b.ForceUnlock(ctx, "k"))
		start := time.Now()
		<-l.Done()
		assert.Zero(t, time.Since(start), "the idle client read the end late")
	})
}

// TestClientManyCallers shares one client among 200 goroutines over 1,000
// keys: the read role passes between them all the time, and a reply lost on
// the way would show as a call that never returns.
func TestClientManyCallers(t *testing.T) {
	addr, b := listen(t, "unix")
	c, err := lmx.Dial(context.Background(), addr)
	require.NoError(t, err)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for w := range 200 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for range 100 {
				key := fmt.Sprint("key/", r.IntN(1000))
				l, err := c.Lock(ctx, key)
				if !assert.NoError(t, err, "lock %s", key) {
					return
				}
				if !assert.NoError(t, l.Unlock(ctx), "unlock %s", key) {
					return
				}
			}
		})
	}
	wg.Wait()
	st, err := b.Stats(context.Background())
	require.NoError(t, err)
	require.Zero(t, st.Holders)
	require.Zero(t, st.Waiters)
	require.EqualValues(t, 200*100, st.Grants)
}

// TestClientLargeReply reads replies larger than the client's 64 KiB read
// buffer, between small ones, through one connection.
func TestClientLargeReply(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		c, b := pipeClient(t)
		pad := strings.Repeat("k", 100)
		for i := range 2000 {
			_, err := b.Lock(ctx, fmt.Sprintf("%s/%04d", pad, i))
			require.NoError(t, err)
		}
		for range 3 {
			keys, err := c.List(ctx, pad, 5000) // about 220 KB
			require.NoError(t, err)
			require.Len(t, keys, 2000)
			require.Equal(t, pad+"/1999", keys[1999].Key)
			require.NoError(t, c.Ping(ctx))
		}
	})
}

// A Lock given up while its grant is on the way leaves the key held until
// the grant arrives and the client releases it. The client's next TryLock
// of the key waits for that, and so finds the key free, as it would through
// the in-process broker.
func TestClientTryLockAfterGivenUpGrant(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := t.Context()
		b := lmx.NewBroker()
		defer b.Close()
		var toClient gatedConn // the broker's writes to c
		c, err := lmx.Dial(ctx, "pipe:0", lmx.WithDialer(func(context.Context, string, string) (net.Conn, error) {
			nc, bc := net.Pipe()
			toClient.Conn = bc
			b.ServeConn(&toClient)
			return nc, nil
		}))
		require.NoError(t, err)
		defer c.Close()
		h, err := b.Lock(ctx, "k")
		require.NoError(t, err)

		lockCtx, cancel := context.WithCancel(ctx)
		gaveUp := make(chan error, 1)
		go func() {
			_, err := c.Lock(lockCtx, "k")
			gaveUp <- err
		}()
		synctest.Wait() // queued
		toClient.hold()
		require.NoError(t, h.Unlock(ctx)) // grants c's Lock; the Granted waits at the gate
		cancel()
		require.ErrorIs(t, <-gaveUp, context.Canceled)
		synctest.Wait() // the Cancel has reached the broker, after the grant

		tried := make(chan error, 1)
		go func() {
			l, err := c.TryLock(ctx, "k")
			if err == nil {
				err = l.Unlock(ctx)
			}
			tried <- err
		}()
		synctest.Wait()
		start := time.Now()
		toClient.open()
		require.NoError(t, <-tried, "the TryLock found the grant its client gave up")
		assert.Zero(t, time.Since(start), "the grant was read at the next idle check, not at once")
		synctest.Wait()
		requireIdle(t, b)
	})
}

// cutConn is a client's connection that, once armed, closes itself after
// the next read that returns data, so that the session is lost right after
// that data.
type cutConn struct {
	net.Conn
	armed atomic.Bool
}

func (c *cutConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.armed.Load() {
		c.Conn.Close()
	}
	return n, err
}

// An Unlock that returned nil has ended its lease with ErrReleased, even
// when the session is lost right after the Release's answer was read
// (issue 16: the lease reported ErrSessionLost, or nothing for a while).
// Another goroutine's Lock holds the read role, so that it reads the answer
// and then the loss, while the Unlock's goroutine wakes to its answer.
func TestUnlockAnsweredThenSessionLost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := t.Context()
		b := lmx.NewBroker()
		defer b.Close()
		var mu sync.Mutex
		var conn *cutConn
		c, err := lmx.Dial(ctx, "pipe:0", lmx.WithDialer(func(context.Context, string, string) (net.Conn, error) {
			mu.Lock()
			defer mu.Unlock()
			conn = &cutConn{Conn: servePipe(b)}
			return conn, nil
		}))
		require.NoError(t, err)
		defer c.Close()
		other := dialPipe(t, b, nil)
		busy, err := other.Lock(ctx, "busy")
		require.NoError(t, err)
		answered := 0
		for range 50 {
			l, err := c.Lock(ctx, "k")
			require.NoError(t, err)
			reading := make(chan error, 1)
			go func() {
				_, err := c.Lock(ctx, "busy")
				reading <- err
			}()
			synctest.Wait() // the Lock of busy waits, holding the read role
			mu.Lock()
			conn.armed.Store(true)
			mu.Unlock()
			err = l.Unlock(ctx)
			if err == nil {
				answered++
				require.ErrorIs(t, l.Err(), lmx.ErrReleased, "Unlock returned nil")
			}
			require.ErrorIs(t, <-reading, lmx.ErrSessionLost)
			if err == nil {
				require.ErrorIs(t, l.Err(), lmx.ErrReleased, "the loss after Unlock's answer")
			}
		}
		require.NoError(t, busy.Unlock(ctx))
		require.Positive(t, answered, "no Unlock was answered before the loss: the test proves nothing")
		requireIdle(t, b)
	})
}

// SplitAddr reads the addresses Dial, Ensure and the CLI take, and says
// what an address may be when it reads none.
func TestSplitAddr(t *testing.T) {
	for in, want := range map[string][2]string{
		"unix:///run/lmx.sock": {"unix", "/run/lmx.sock"},
		"tcp://127.0.0.1:6971": {"tcp", "127.0.0.1:6971"},
		"host:6971":            {"tcp", "host:6971"},
		"/run/lmx/lmx.sock":    {"unix", "/run/lmx/lmx.sock"}, // a bare path, as in LMX_ADDR
		"./lmx.sock":           {"unix", "./lmx.sock"},
		"../lmx.sock":          {"unix", "../lmx.sock"},
	} {
		network, address, err := lmx.SplitAddr(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, [2]string{network, address}, in)
	}
	for bad, why := range map[string]string{
		"":          "is empty",
		"ftp://x":   `has scheme "ftp", not unix or tcp`,
		"unix://":   "has no socket path",
		"tcp://":    "has no host:port",
		"localhost": "is not unix:///path, tcp://host:port, host:port or a socket's path",
		"lmx.sock":  "is not unix:///path",
	} {
		_, _, err := lmx.SplitAddr(bad)
		if assert.Error(t, err, bad) {
			assert.Contains(t, err.Error(), why, bad)
		}
	}
}

// Dial takes a bare path for a Unix socket, as the CLI always did.
func TestDialBarePath(t *testing.T) {
	b := lmx.NewBroker()
	defer b.Close()
	path := socketPath(t)
	_, err := b.Listen("unix", path)
	require.NoError(t, err)
	c, err := lmx.Dial(t.Context(), path)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Ping(t.Context()))
}
