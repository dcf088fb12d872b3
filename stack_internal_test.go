package lmx

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/require"
)

// stackInUse returns the bytes of goroutine stacks in use, after two
// collections if collect: the first shrinks the stacks of parked goroutines
// that use little of theirs, the second returns what the first freed.
func stackInUse(collect bool) uint64 {
	var ms runtime.MemStats
	if collect {
		runtime.GC()
		runtime.GC()
	}
	runtime.ReadMemStats(&ms)
	return ms.StackInuse
}

// idle has nc's session take a lock, reads the Welcome and the grant, and
// leaves the session idle.
func idle(t *testing.T, nc net.Conn, i int) {
	r := defaultRequest()
	b := appendHello(nil, helloMsg{version: protocolVersion})
	b = appendLock(b, 1, fmt.Sprint("idle/", i), &r, true)
	_, err := nc.Write(b)
	require.NoError(t, err)
	for _, want := range []op{opWelcome, opGranted} {
		var hdr [headerLen]byte
		_, err = io.ReadFull(nc, hdr[:])
		require.NoError(t, err)
		h := parseHeader(hdr[:])
		require.Equal(t, want, h.op)
		_, err = io.ReadFull(nc, make([]byte, h.length))
		require.NoError(t, err)
	}
}

// A deepConn's reads grow the reader's stack past 4 KiB before they block,
// as handling a request might.
type deepConn struct{ net.Conn }

func (c deepConn) Read(p []byte) (int, error) {
	deep(40)
	return c.Conn.Read(p)
}

// deep takes n frames of over 100 bytes of stack.
//
//go:noinline
func deep(n int) byte {
	var a [100]byte
	a[n%len(a)] = byte(n)
	if n == 0 {
		return a[0]
	}
	return deep(n-1) + a[n%len(a)]
}

// An idle session keeps one goroutine, its reader, parked in a read of its
// connection. Its stack does not grow past 4 KiB for a Hello and a Lock;
// grown further (by deepConn here), the garbage collector halves it again:
// the collector halves a parked goroutine's stack while it uses under a
// quarter of it, counting the runtime's 800-byte reserve for nosplit
// functions, and the reader parks shallow. The bounds leave room for stack
// spans that other goroutines keep partly in use.
func TestIdleSessionStack(t *testing.T) {
	if raceEnabled {
		// The race detector doubles the reserve to 1600 bytes, and the frames
		// from net.Conn.Read down to the netpoller alone take 700 under it:
		// no reader parked in a read of a net.Conn is shrunk to 4 KiB.
		t.Skip("the race detector's stack reserve keeps every parked reader at 8 KiB; run without -race")
	}
	const n = 500
	b := NewBroker(WithLogger(slog.New(slog.DiscardHandler)))
	defer b.Close()
	addr, err := b.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	var conns []net.Conn
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	dial := func(addr string) net.Conn {
		nc, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		conns = append(conns, nc)
		return nc
	}
	defer debug.SetGCPercent(debug.SetGCPercent(-1)) // no collection shrinks a stack unasked
	before := int64(stackInUse(true))
	for i := range n {
		idle(t, dial(addr.String()), i)
	}
	grown := (int64(stackInUse(false)) - before) / n
	require.LessOrEqual(t, grown, int64(4<<10+512), "stack an idle session's reader grew to")

	before = int64(stackInUse(true))
	for i := range n {
		nc := dial(ln.Addr().String())
		srv, err := ln.Accept()
		require.NoError(t, err)
		b.ServeConn(deepConn{srv})
		idle(t, nc, n+i)
	}
	deepGrown := (int64(stackInUse(false)) - before) / n
	kept := (int64(stackInUse(true)) - before) / n
	t.Logf("%d idle sessions: %d B of stack a session; grown by deep reads: %d B, %d B after collections", n, grown, deepGrown, kept)
	require.GreaterOrEqual(t, deepGrown, int64(6<<10), "stack of a session whose reads go deep")
	require.LessOrEqual(t, kept, int64(4<<10+512), "stack an idle session's reader kept")
}
