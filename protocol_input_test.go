package lmx_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// These tests send the broker bad input on the wire: malformed, oversized or
// half-sent frames, keys over its limit. Each gets a clear error and the
// broker serves its other clients as before.

// A Lock whose payload does not parse is answered with Error code 8 for its
// request id, grants nothing, and the session goes on.
func TestProtocolMalformedLock(t *testing.T) {
	addr, by := tcpBroker(t)
	nc := dialRaw(t, addr)
	handshake(t, nc, "")

	valid := lockPayload("k")
	tests := []struct {
		name    string
		payload []byte
		flags   byte
	}{
		{"truncated", valid[:len(valid)-1], 0},
		{"only the key", appendStr(nil, "k"), 0},
		{"empty", nil, 0},
		{"trailing byte", append(append([]byte(nil), valid...), 0), 0},
		{"key longer than the payload", append(binary.AppendUvarint(nil, 1000), 'k'), 0},
		{"overlong varint", append(appendStr(nil, "k"), bytes.Repeat([]byte{0xff}, 11)...), 0},
		{"KeepAlive flag without its bound", valid, flagKeepAlive},
		{"KeepAlive flag with a bound of 0", binary.AppendUvarint(append([]byte(nil), valid...), 0), flagKeepAlive},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := uint32(10 + i)
			writeFrame(t, nc, opLock, flagWait|tt.flags, id, tt.payload)
			msg := requireErrorFrame(t, readFrame(t, nc), codeProtocol, id)
			assert.Contains(t, msg, lmx.ErrProtocol.Error())
			ping(t, nc, 1000+id)
		})
	}
	by.check(t)

	// Nothing was granted: the same connection locks k at once.
	writeFrame(t, nc, opLock, 0, 99, valid)
	f := readFrame(t, nc)
	require.Equal(t, opGranted, f.op, "a valid Lock after malformed ones: %v", f)
	require.Equal(t, uint32(99), f.id)
	by.check(t)
}

// A frame announcing a payload over the broker's limit is answered with
// Error code 8 and the connection closed, at once: the broker neither waits
// for the payload nor allocates it.
func TestProtocolOversizedFrame(t *testing.T) {
	addr, by := tcpBroker(t, lmx.WithMaxFrame(1024))
	nc := dialRaw(t, addr)
	handshake(t, nc, "")

	// A frame at the limit is served.
	writeFrame(t, nc, opPing, 0, 1, make([]byte, 1024))
	f := readFrame(t, nc)
	require.Equal(t, opPong, f.op, "a frame of exactly the limit: %v", f)

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	writeRaw(t, nc, header(opLock, 0, 0, 9, 1<<20)) // and no payload
	msg := requireErrorFrame(t, readFrame(t, nc), codeProtocol, 9)
	runtime.ReadMemStats(&after)
	assert.Contains(t, msg, lmx.ErrProtocol.Error())
	assert.Contains(t, msg, "1048576")
	assert.Contains(t, msg, "1024")
	requireClosed(t, nc)
	assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(512<<10), "the broker allocated for the announced payload")
	by.check(t)
}

// Bug pinned: when the session's writer goroutine is busy writing a pushed
// frame (a Granted, an Ended) as the reader meets a frame over the limit,
// the reader's flush returns at once, leaving the writing to the writer, and
// the connection's run (conn.run) closes it before the writer gets to the Error
// frame: the client never learns why it was cut off. PROTOCOL.md: "a longer
// frame is answered with an Error frame (code 8) and the connection is
// closed".
func TestOversizedFrameErrorLostWhileWriterBusy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		b := lmx.NewBroker(lmx.WithMaxFrame(1024))
		defer b.Close()
		held, err := b.Lock(ctx, "k")
		require.NoError(t, err)
		nc := servePipe(b)
		defer nc.Close()
		handshake(t, nc, "")

		writeFrame(t, nc, opLock, flagWait, 1, lockPayload("k"))
		synctest.Wait() // queued
		// The grant is pushed by the session's writer goroutine, which then
		// blocks writing it: this client reads nothing yet.
		require.NoError(t, held.Unlock(ctx))
		synctest.Wait()
		writeRaw(t, nc, header(opLock, 0, 0, 2, 1<<20))
		synctest.Wait() // the broker has answered, as it does, and closed

		got := readUntilClosed(t, nc)
		found := false
		for _, f := range got {
			found = found || f.op == opError && f.code == codeProtocol && f.id == 2
		}
		require.True(t, found, "the broker closed the connection without the Error frame for a frame over its limit; it sent %v", got)
	})
}

// A client that stops in the middle of a frame is dropped after the session
// timeout, and its leases are released.
func TestProtocolHalfFrameThenSilence(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		b := lmx.NewBroker(lmx.WithHeartbeat(100*time.Millisecond, 300*time.Millisecond))
		defer b.Close()
		c, err := lmx.Dial(ctx, "pipe:0", pipeDialer(b))
		require.NoError(t, err)
		defer c.Close()
		by := newBystander(t, c)

		nc := servePipe(b)
		defer nc.Close()
		handshake(t, nc, "")
		writeFrame(t, nc, opLock, 0, 1, lockPayload("k"))
		f := readFrame(t, nc)
		require.Equal(t, opGranted, f.op, "%v", f)
		_, err = c.TryLock(ctx, "k")
		require.ErrorIs(t, err, lmx.ErrLocked)

		writeRaw(t, nc, header(opPing, 0, 0, 2, 0)[:5])
		start := time.Now()
		lctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		l, err := c.Lock(lctx, "k")
		require.NoError(t, err, "the stalled session's lock was not released within a second")
		waited := time.Since(start)
		assert.GreaterOrEqual(t, waited, 300*time.Millisecond, "released before the session timeout")
		assert.LessOrEqual(t, waited, 400*time.Millisecond, "released long after the session timeout")
		require.NoError(t, l.Unlock(ctx))
		requireClosed(t, nc)
		by.check(t)
	})
}

// A connection that never completes its Hello is closed after the session
// timeout.
func TestProtocolHalfHelloThenSilence(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := lmx.NewBroker(lmx.WithHeartbeat(100*time.Millisecond, 300*time.Millisecond))
		defer b.Close()
		nc := servePipe(b)
		defer nc.Close()
		hello := helloFrame(helloPayload(protocolVersion, ""))
		writeRaw(t, nc, hello[:len(hello)-1])
		start := time.Now()
		requireClosed(t, nc)
		assert.Equal(t, 300*time.Millisecond, time.Since(start))
	})
}

// A Lock of a key longer than the broker's limit is answered with Error code
// 4, and the session goes on.
func TestProtocolKeyTooLong(t *testing.T) {
	addr, by := tcpBroker(t)
	nc := dialRaw(t, addr)
	handshake(t, nc, "")

	writeFrame(t, nc, opLock, 0, 5, lockPayload(strings.Repeat("k", lmx.DefaultMaxKeyLen+1)))
	msg := requireErrorFrame(t, readFrame(t, nc), codeInvalidKey, 5)
	assert.Contains(t, msg, lmx.ErrInvalidKey.Error())
	writeFrame(t, nc, opLock, 0, 6, lockPayload(""))
	requireErrorFrame(t, readFrame(t, nc), codeInvalidKey, 6)
	ping(t, nc, 7)
	by.check(t)

	// The longest key the broker takes.
	writeFrame(t, nc, opLock, 0, 8, lockPayload(strings.Repeat("k", lmx.DefaultMaxKeyLen)))
	f := readFrame(t, nc)
	require.Equal(t, opGranted, f.op, "a key of the maximum length: %v", f)
	by.check(t)
}

// Bug pinned: a Lock's priority travels as a varint (64 bits) and
// lmx.Priority takes an int, but the broker keeps it in an int32
// (table.go, shard.begin: prio: int32(r.priority)) without checking its
// range, so a priority of 1<<31 becomes -1<<31: the most urgent waiter is
// queued last, and Inspect reports a priority that was never asked. The
// broker must either honour the priority or refuse it (ErrInvalidOption,
// code 5).
func TestLockPriorityBeyondInt32Wraps(t *testing.T) {
	if strconv.IntSize < 64 {
		t.Skip("a priority of 1<<31 does not fit an int here")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*frameWait)
	defer cancel()
	addr, b := listen(t, "tcp")
	held, err := b.Lock(ctx, "p")
	require.NoError(t, err)
	nc := dialRaw(t, addr)
	handshake(t, nc, "")

	lock := func(prio int64) []byte {
		p := appendStr(nil, "p")
		p = binary.AppendUvarint(p, 0)
		p = binary.AppendUvarint(p, 1)
		p = binary.AppendVarint(p, prio)
		return appendStr(p, "")
	}
	const high = int64(1) << 31
	writeFrame(t, nc, opLock, flagWait, 1, lock(0))
	writeFrame(t, nc, opLock, flagWait, 2, lock(high))
	writeFrame(t, nc, opPing, 0, 3, nil)
	f := readFrame(t, nc)
	if f.op == opError && f.id == 2 {
		assert.Equal(t, uint16(5), f.code, "refused with the wrong code: %v", f)
		return // refusing a priority it cannot keep is fine
	}
	require.Equal(t, opPong, f.op, "%v", f)

	ki, err := b.Inspect(ctx, "p")
	require.NoError(t, err)
	require.Len(t, ki.Waiters, 2)
	assert.Equal(t, high, int64(ki.Waiters[0].Priority), "the queue, head first: %+v", ki.Waiters)
	require.NoError(t, held.Unlock(ctx))
	f = readFrame(t, nc)
	require.Equal(t, opGranted, f.op, "%v", f)
	assert.Equal(t, uint32(2), f.id, "the waiter of priority 1<<31 was not granted first")
}

// Bug pinned: the broker compares a frame's length with uint32(maxFrame)
// (session.go, session.read), so WithMaxFrame(n) for n of 4 GiB or more
// takes n modulo 4 GiB as the limit: WithMaxFrame(1<<32) refuses every frame
// with a payload, as longer than its limit of 4294967296 bytes, and closes
// the session. The limit must be min(n, the largest length a header
// carries).
func TestMaxFrameOf4GiBRefusesEverything(t *testing.T) {
	if strconv.IntSize < 64 {
		t.Skip("1<<32 does not fit an int here")
	}
	var limit uint64 = 1 << 32
	addr, _ := listen(t, "tcp", lmx.WithMaxFrame(int(limit)))
	nc := dialRaw(t, addr)
	handshake(t, nc, "")
	writeFrame(t, nc, opLock, 0, 1, lockPayload("k"))
	f := readFrame(t, nc)
	require.Equal(t, opGranted, f.op, "a Lock of %d bytes, under a limit of 4 GiB, was answered with %v", len(lockPayload("k")), f)
}

// Bug pinned: the broker flushes its answers only when its read buffer is
// empty (session.go, session.read: br.Buffered() == 0), so while the buffer
// holds the first bytes of a frame, the answers to the whole frames before
// it wait: here a Pong is never sent, and when the session times out it is
// dropped with the connection. PROTOCOL.md: "answers come as they are
// ready", and "a reader must handle a frame split across reads".
func TestAnswersWithheldWhileNextFrameIncomplete(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := lmx.NewBroker(lmx.WithHeartbeat(time.Second, 3*time.Second))
		defer b.Close()
		nc := servePipe(b)
		defer nc.Close()
		handshake(t, nc, "")

		// A whole Ping, and 5 bytes of the next frame, in one write.
		writeRaw(t, nc, append(header(opPing, 0, 0, 1, 0), header(opPing, 0, 0, 2, 0)[:5]...))
		start := time.Now()
		f, err := tryReadFrame(nc)
		require.NoError(t, err, "no Pong for a whole Ping after %v", time.Since(start))
		require.Equal(t, opPong, f.op, "%v", f)
		assert.Equal(t, uint32(1), f.id)
		assert.Zero(t, time.Since(start), "the Pong waited for the next frame")
	})
}

// Bug pinned: Broker.Shutdown answers a session's queued Locks with ErrClosed
// and then calls session.shutdown's s.out.flush() and s.nc.Close(); when the
// session's writer goroutine is busy writing a pushed frame, flush returns at
// once, and the close cuts the answers off: the client never learns that its
// Lock was refused. Shutdown's documentation: it "answers every queued remote
// Lock with ErrClosed, sends what each session has to send".
func TestShutdownAnswersLostWhileWriterBusy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		b := lmx.NewBroker()
		defer b.Close()
		a, err := b.Lock(ctx, "a")
		require.NoError(t, err)
		defer a.Unlock(ctx)
		k, err := b.Lock(ctx, "k")
		require.NoError(t, err)
		nc := servePipe(b)
		defer nc.Close()
		handshake(t, nc, "")

		writeFrame(t, nc, opLock, flagWait, 1, lockPayload("a")) // stays queued
		writeFrame(t, nc, opLock, flagWait, 2, lockPayload("k"))
		synctest.Wait()
		// The grant of k is pushed by the session's writer goroutine, which
		// then blocks writing it: this client reads nothing yet.
		require.NoError(t, k.Unlock(ctx))
		synctest.Wait()
		shut := make(chan error, 1)
		go func() { shut <- b.Shutdown(ctx) }()
		synctest.Wait()

		got := readUntilClosed(t, nc)
		require.NoError(t, <-shut)
		found := false
		for _, f := range got {
			found = found || f.op == opError && f.code == 6 && f.id == 1
		}
		require.True(t, found, "Shutdown closed the connection without answering the queued Lock with ErrClosed (code 6); it sent %v", got)
	})
}
