package lmx_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// runChild is the test binary run as a child process by a test.
func runChild(mode, addr string) int {
	ctx := context.Background()
	switch mode {
	case "hold": // take a lock and hold it until killed
		c, err := lmx.Dial(ctx, addr)
		if err != nil {
			fmt.Println("error", err)
			return 1
		}
		l, err := c.Lock(ctx, "held")
		if err != nil {
			fmt.Println("error", err)
			return 1
		}
		fmt.Println("locked", l.Token())
	case "ensure": // ensure a broker, say whether this process started it
		_, b, err := lmx.Ensure(ctx, addr, nil)
		if err != nil {
			fmt.Println("error", err)
			return 1
		}
		fmt.Println("started", b != nil)
	case "broker": // serve a broker until killed
		b := lmx.NewBroker()
		if _, err := b.Listen("unix", addr); err != nil {
			fmt.Println("error", err)
			return 1
		}
		fmt.Println("listening")
	default:
		fmt.Println("unknown child mode", mode)
		return 2
	}
	select {}
}

// startChild runs the test binary as a child in mode, waits for its first
// line, and returns it; the child is killed at cleanup.
func startChild(t *testing.T, mode, addr string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "LMX_TEST_CHILD="+mode, "LMX_TEST_ADDR="+addr)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	select {
	case l := <-line:
		require.NotContains(t, l, "error")
		return cmd, l
	case <-time.After(30 * time.Second):
		t.Fatal("the child process did not start")
		return nil, ""
	}
}

// A process killed while it holds a lock frees it as soon as the kernel
// closes its socket: well within the heartbeat timeout.
func TestKilledHolderReleases(t *testing.T) {
	addr, b := listen(t, "unix")
	cmd, line := startChild(t, "hold", addr)
	require.True(t, strings.HasPrefix(line, "locked"), line)
	ki, err := b.Inspect(context.Background(), "held")
	require.NoError(t, err)
	require.Len(t, ki.Holders, 1, "the child holds the lock")

	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), lmx.DefaultSessionTimeout)
	defer cancel()
	l, err := b.Lock(ctx, "held")
	require.NoError(t, err, "the killed holder's lock was not released")
	t.Logf("released %v after the kill", time.Since(start))
	require.NoError(t, l.Unlock(ctx))
	st, err := b.Stats(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(1), st.SessionLost)
}

// A broker killed under a client ends every lease of the client with
// ErrSessionLost, and fails its Locks in flight.
func TestKilledBrokerEndsLeases(t *testing.T) {
	path := socketPath(t)
	cmd, _ := startChild(t, "broker", path)
	ctx := context.Background()
	c, err := lmx.Dial(ctx, "unix://"+path, lmx.WithReconnectBackoff(time.Hour, time.Hour))
	require.NoError(t, err)
	defer c.Close()
	held := make([]*lmx.Lease, 3)
	for i := range held {
		held[i], err = c.Lock(ctx, fmt.Sprint("k", i))
		require.NoError(t, err)
	}
	inFlight := make(chan error, 1)
	go func() {
		_, err := c.Lock(ctx, "k0")
		inFlight <- err
	}()
	waitFor(t, func() bool { ki, _ := c.Inspect(ctx, "k0"); return len(ki.Waiters) == 1 })

	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	for _, l := range held {
		select {
		case <-l.Done():
			assert.ErrorIs(t, l.Err(), lmx.ErrSessionLost)
			assert.ErrorIs(t, l.Err(), lmx.ErrLeaseLost)
		case <-time.After(lmx.DefaultSessionTimeout):
			t.Fatal("a lease did not report the broker's death")
		}
	}
	select {
	case err := <-inFlight:
		assert.ErrorIs(t, err, lmx.ErrSessionLost)
	case <-time.After(lmx.DefaultSessionTimeout):
		t.Fatal("a Lock in flight did not fail")
	}
}

// syncBuffer is a bytes.Buffer safe for a logger's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls cond, for conditions only a remote call can observe.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		require.False(t, time.Now().After(deadline), "condition not met in time")
	}
}

// silentConn stops writing when told, as a partitioned peer would: the
// broker hears nothing, not even the close, and must notice the silence by
// itself.
type silentConn struct {
	net.Conn
	silent *atomic.Bool
}

func (c silentConn) Write(p []byte) (int, error) {
	if c.silent.Load() {
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c silentConn) Close() error {
	if c.silent.Load() {
		c.Conn.SetReadDeadline(time.Unix(1, 0)) // unblock our reader only
		return nil
	}
	return c.Conn.Close()
}

// A session that goes silent is ended by the broker after the session
// timeout, releasing its leases; the client, hearing no pongs, reports the
// loss on its side too, then reconnects.
func TestSilentSessionTimesOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		var logs syncBuffer
		b := lmx.NewBroker(lmx.WithHeartbeat(time.Second, 3*time.Second), lmx.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
		defer b.Close()
		var silent atomic.Bool
		dial := func(context.Context, string, string) (net.Conn, error) {
			c1, c2 := net.Pipe()
			b.ServeConn(c2)
			return silentConn{c1, &silent}, nil
		}
		c, err := lmx.Dial(ctx, "pipe:0", lmx.WithDialer(dial))
		require.NoError(t, err)
		defer c.Close()
		l, err := c.Lock(ctx, "k")
		require.NoError(t, err)

		start := time.Now()
		silent.Store(true)
		<-l.Done()
		assert.ErrorIs(t, l.Err(), lmx.ErrSessionLost)
		assert.InDelta(t, 3*time.Second, time.Since(start), float64(time.Second), "lost after %v", time.Since(start))
		synctest.Wait()
		bl, err := b.TryLock(ctx, "k")
		require.NoError(t, err, "the broker kept the silent session's lease")
		bl.Unlock(ctx)
		assert.Contains(t, logs.String(), "i/o timeout", "the broker did not time the session out itself")

		silent.Store(false)
		l, err = c.Lock(ctx, "k") // waits for the reconnection
		require.NoError(t, err)
		require.NoError(t, l.Unlock(ctx))
	})
}

// A lease asked with KeepOnDisconnect outlives its session until its TTL,
// and can be released by id from another session meanwhile.
func TestKeepOnDisconnect(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		a, b := pipeClient(t)
		kept, err := a.Lock(ctx, "kept", lmx.TTL(10*time.Second), lmx.KeepOnDisconnect())
		require.NoError(t, err)
		_, err = a.Lock(ctx, "gone", lmx.TTL(10*time.Second))
		require.NoError(t, err)
		released, err := a.Lock(ctx, "released", lmx.TTL(10*time.Second), lmx.KeepOnDisconnect())
		require.NoError(t, err)
		require.NoError(t, a.Close())
		synctest.Wait()

		_, err = b.TryLock(ctx, "kept")
		require.ErrorIs(t, err, lmx.ErrLocked, "a KeepOnDisconnect lease ended with its session")
		bl, err := b.TryLock(ctx, "gone")
		require.NoError(t, err, "a lease without KeepOnDisconnect outlived its session")
		bl.Unlock(ctx)
		require.NoError(t, b.Release(ctx, "released", released.ID()))

		time.Sleep(10 * time.Second)
		synctest.Wait()
		bl, err = b.TryLock(ctx, "kept")
		require.NoError(t, err, "the kept lease outlived its TTL")
		assert.Greater(t, bl.Token(), kept.Token())
		st, err := b.Stats(ctx)
		require.NoError(t, err)
		assert.Equal(t, uint64(1), st.Expiries)
	})
}

// A lease asked with KeepAlive and KeepOnDisconnect is renewed while its
// session lives, and no more once the session ends: its holder is gone, so
// it expires at its TTL, long before its KeepAlive bound. Expires, on the
// client, follows the broker's renewals it never hears of.
func TestKeepAliveEndsWithSession(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		a, b := pipeClient(t)
		l, err := a.Lock(ctx, "k", lmx.TTL(10*time.Second), lmx.KeepAlive(time.Hour), lmx.KeepOnDisconnect())
		require.NoError(t, err)
		time.Sleep(35 * time.Second)
		_, err = b.TryLock(ctx, "k")
		require.ErrorIs(t, err, lmx.ErrLocked, "KeepAlive did not renew the lease")
		assert.True(t, l.Expires().After(time.Now().Add(5*time.Second)), "Expires %v did not follow the renewals", l.Expires())
		assert.False(t, l.Expires().After(time.Now().Add(10*time.Second)), "Expires %v is more than a TTL ahead", l.Expires())

		require.NoError(t, a.Close())
		time.Sleep(10 * time.Second)
		synctest.Wait()
		bl, err := b.TryLock(ctx, "k")
		require.NoError(t, err, "the broker renewed a lease whose session had ended")
		require.NoError(t, bl.Unlock(ctx))
	})
}

// A client's KeepAlive lease reports, from Expires, the expiry the broker
// gives it, renewal after renewal, and after an Extend shorter than half
// its TTL, which the broker renews at once, up to the KeepAlive bound.
func TestKeepAliveExpiresFollowsBroker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		a, b := pipeClient(t)
		l, err := a.Lock(ctx, "k", lmx.TTL(10*time.Second), lmx.KeepAlive(time.Minute))
		require.NoError(t, err)
		start := time.Now()
		for i := 0; time.Since(start) < time.Minute; i++ {
			if i == 10 {
				require.NoError(t, l.Extend(ctx, 2*time.Second))
			}
			synctest.Wait()
			info, err := b.Inspect(ctx, "k")
			require.NoError(t, err)
			require.Len(t, info.Holders, 1, "at %v", time.Since(start))
			assert.WithinDuration(t, info.Holders[0].Expires, l.Expires(), 0, "at %v", time.Since(start))
			time.Sleep(1700 * time.Millisecond)
		}
		<-l.Done()
		assert.ErrorIs(t, l.Err(), lmx.ErrExpired)
	})
}

// A client whose broker restarts on the same socket reconnects by itself.
func TestReconnect(t *testing.T) {
	ctx := context.Background()
	path := socketPath(t)
	b1 := lmx.NewBroker()
	_, err := b1.Listen("unix", path)
	require.NoError(t, err)
	c, err := lmx.Dial(ctx, "unix://"+path, lmx.WithReconnectBackoff(10*time.Millisecond, 50*time.Millisecond))
	require.NoError(t, err)
	defer c.Close()
	l, err := c.Lock(ctx, "k")
	require.NoError(t, err)

	require.NoError(t, b1.Close())
	<-l.Done()
	require.ErrorIs(t, l.Err(), lmx.ErrSessionLost)

	b2 := lmx.NewBroker()
	defer b2.Close()
	_, err = b2.Listen("unix", path)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	l, err = c.Lock(ctx, "k")
	require.NoError(t, err, "the client did not reconnect")
	ki, err := b2.Inspect(ctx, "k")
	require.NoError(t, err)
	require.Len(t, ki.Holders, 1)
	assert.Equal(t, l.ID(), ki.Holders[0].ID)
}

func TestUnixSocket(t *testing.T) {
	path := socketPath(t)
	// A socket file left behind by a dead broker.
	stale, err := net.Listen("unix", path)
	require.NoError(t, err)
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	b := lmx.NewBroker()
	defer b.Close()
	_, err = b.Listen("unix", path)
	require.NoError(t, err, "a stale socket file was not replaced")
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	other := lmx.NewBroker()
	defer other.Close()
	_, err = other.Listen("unix", path)
	require.ErrorIs(t, err, syscall.EADDRINUSE, "a live broker's socket was stolen")
	c, err := lmx.Dial(context.Background(), "unix://"+path)
	require.NoError(t, err, "the first broker lost its socket")
	c.Close()

	notSocket := path + ".txt"
	require.NoError(t, os.WriteFile(notSocket, []byte("data"), 0o600))
	_, err = other.Listen("unix", notSocket)
	require.ErrorContains(t, err, "not a socket")
	data, _ := os.ReadFile(notSocket)
	assert.Equal(t, "data", string(data), "Listen clobbered a file")
}

func TestTLS(t *testing.T) {
	ca, serverCert, clientCert := testCerts(t)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	ctx := context.Background()
	addr, _ := listen(t, "tcp", lmx.WithTLS(&tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}))

	c, err := lmx.Dial(ctx, addr, lmx.WithDialTLS(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{clientCert}}))
	require.NoError(t, err)
	l, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	require.NoError(t, l.Unlock(ctx))
	require.NoError(t, c.Close())

	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = lmx.Dial(dctx, addr, lmx.WithDialTLS(&tls.Config{RootCAs: pool}))
	assert.Error(t, err, "a client without a certificate got in")
	_, err = lmx.Dial(dctx, addr)
	assert.Error(t, err, "a plain TCP client got in")
}

// testCerts makes a CA and a server and a client certificate it signs.
func testCerts(t *testing.T) (*x509.Certificate, tls.Certificate, tls.Certificate) {
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		return k
	}
	caKey := newKey()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "lmx test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	ca, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	issue := func(serial int64, usage x509.ExtKeyUsage) tls.Certificate {
		k := newKey()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "lmx test"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
			KeyUsage: x509.KeyUsageDigitalSignature,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		require.NoError(t, err)
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
	}
	return ca, issue(2, x509.ExtKeyUsageServerAuth), issue(3, x509.ExtKeyUsageClientAuth)
}

func TestLimits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		c, b := pipeClient(t, lmx.WithMaxSessions(1), lmx.WithMaxWaiters(2))
		dial := func(context.Context, string, string) (net.Conn, error) {
			c1, c2 := net.Pipe()
			b.ServeConn(c2)
			return c1, nil
		}
		_, err := lmx.Dial(ctx, "pipe:0", lmx.WithDialer(dial))
		require.ErrorIs(t, err, lmx.ErrBusy, "a session past the limit")

		h, err := c.Lock(ctx, "k")
		require.NoError(t, err)
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() {
				l, err := c.Lock(ctx, "k")
				if err == nil {
					l.Unlock(ctx)
				}
			})
		}
		synctest.Wait()
		_, err = c.Lock(ctx, "k")
		require.ErrorIs(t, err, lmx.ErrBusy, "a waiter past the limit")
		require.NoError(t, h.Unlock(ctx))
		wg.Wait()
		st, err := b.Stats(ctx)
		require.NoError(t, err)
		assert.Equal(t, 1, st.Sessions)
	})
}

// Shutdown answers queued remote Locks, ends sessions, and makes Serve and
// Listen return ErrClosed.
func TestShutdown(t *testing.T) {
	ctx := context.Background()
	b := lmx.NewBroker()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- b.Serve(l) }()
	c, err := lmx.Dial(ctx, l.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	held, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	queued := make(chan error, 1)
	go func() {
		_, err := c.Lock(ctx, "k")
		queued <- err
	}()
	waitFor(t, func() bool { ki, _ := b.Inspect(ctx, "k"); return len(ki.Waiters) == 1 })

	require.NoError(t, b.Shutdown(ctx))
	assert.ErrorIs(t, <-queued, lmx.ErrClosed)
	assert.ErrorIs(t, <-served, lmx.ErrClosed)
	<-held.Done()
	assert.ErrorIs(t, held.Err(), lmx.ErrLeaseLost)
	_, err = b.Listen("tcp", "127.0.0.1:0")
	assert.ErrorIs(t, err, lmx.ErrClosed)
	assert.True(t, errors.Is(b.Serve(l), lmx.ErrClosed))
}

// A broker without an auth token admits every client, even one that
// presents a token.
func TestNoAuthTokenAdmitsAll(t *testing.T) {
	addr, _ := listen(t, "tcp")
	c, err := lmx.Dial(context.Background(), addr, lmx.WithDialToken("anything"))
	require.NoError(t, err)
	c.Close()
}

// Processes racing to Ensure a broker at one address end up with exactly
// one broker, which all of them use.
func TestEnsureRace(t *testing.T) {
	path := socketPath(t)
	const n = 5
	lines := make(chan string, n)
	for range n {
		go func() {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "LMX_TEST_CHILD=ensure", "LMX_TEST_ADDR=unix://"+path)
			out, err := cmd.StdoutPipe()
			if err != nil {
				lines <- "error " + err.Error()
				return
			}
			if err := cmd.Start(); err != nil {
				lines <- "error " + err.Error()
				return
			}
			t.Cleanup(func() {
				cmd.Process.Kill()
				cmd.Wait()
			})
			s, _ := bufio.NewReader(out).ReadString('\n')
			lines <- strings.TrimSpace(s)
		}()
	}
	started := 0
	for range n {
		select {
		case l := <-lines:
			require.True(t, strings.HasPrefix(l, "started "), l)
			if l == "started true" {
				started++
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a child did not ensure a broker")
		}
	}
	assert.Equal(t, 1, started, "brokers started")
	c, err := lmx.Dial(context.Background(), "unix://"+path)
	require.NoError(t, err)
	defer c.Close()
	st, err := c.Stats(context.Background())
	require.NoError(t, err)
	assert.Equal(t, n+1, st.Sessions, "every process is a client of the one broker")
}
