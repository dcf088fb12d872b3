package lmx

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
)

// stackInUse returns the bytes of goroutine stacks in use, after two
// collections: the first shrinks the stacks of parked goroutines that use
// little of theirs, the second returns what the first freed.
func stackInUse() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.StackInuse
}

// openIdle opens a session to addr that takes a lock, reads the Welcome and
// the grant, and leaves the session idle.
func openIdle(t *testing.T, addr string, i int) net.Conn {
	nc, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	r := defaultRequest()
	b := appendHello(nil, helloMsg{version: protocolVersion})
	b = appendLock(b, 1, fmt.Sprint("idle/", i), &r, true)
	_, err = nc.Write(b)
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
	return nc
}

// An idle session keeps one goroutine, its reader, parked in a read of its
// connection. The garbage collector halves a parked goroutine's stack while
// it uses under a quarter of it, counting the runtime's 800-byte reserve for
// nosplit functions: a reader parked shallow keeps 4 KiB of stack, not the
// 8 KiB that handling requests grows it to. The bound leaves room for stack
// spans that other goroutines' stacks keep partly in use.
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
	before := stackInUse()
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	for i := range n {
		conns = append(conns, openIdle(t, addr.String(), i))
	}
	perSession := (int64(stackInUse()) - int64(before)) / n
	t.Logf("%d idle sessions: %d B of stack a session", n, perSession)
	require.LessOrEqual(t, perSession, int64(4<<10+512), "stack of an idle session's reader")
}
