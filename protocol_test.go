package lmx_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// These tests speak the wire protocol of PROTOCOL.md byte by byte, as a
// broken or hostile client would, and check what the broker answers and that
// a well-behaved Client of the same broker never notices.

// The protocol's numbers, from PROTOCOL.md.
const (
	headerLen = 12

	opHello   byte = 0x01
	opLock    byte = 0x02
	opPing    byte = 0x08
	opWelcome byte = 0x81
	opGranted byte = 0x82
	opError   byte = 0x84
	opPong    byte = 0x88

	flagWait      byte = 1
	flagKeepAlive byte = 64

	codeInvalidKey uint16 = 4
	codeProtocol   uint16 = 8
	codeAuth       uint16 = 9

	protocolVersion = 5
	helloMagic      = "LMX\x00"
)

// frameWait bounds every wait for the broker's answer on a raw connection.
const frameWait = 5 * time.Second

// A wireFrame is one frame: its header fields and its payload.
type wireFrame struct {
	op, flags byte
	code      uint16
	id        uint32
	payload   []byte
}

// message returns the message of an Error frame.
func (f wireFrame) message() string {
	n, k := binary.Uvarint(f.payload)
	if k <= 0 || n > uint64(len(f.payload)-k) {
		return fmt.Sprintf("<malformed error payload %x>", f.payload)
	}
	return string(f.payload[k : k+int(n)])
}

func (f wireFrame) String() string {
	s := fmt.Sprintf("op 0x%02x id %d code %d, %d bytes", f.op, f.id, f.code, len(f.payload))
	if f.op == opError {
		s += fmt.Sprintf(" %q", f.message())
	}
	return s
}

// header returns a frame header announcing length payload bytes.
func header(op, flags byte, code uint16, id, length uint32) []byte {
	h := make([]byte, headerLen)
	h[0], h[1] = op, flags
	binary.BigEndian.PutUint16(h[2:], code)
	binary.BigEndian.PutUint32(h[4:], id)
	binary.BigEndian.PutUint32(h[8:], length)
	return h
}

// writeFrame writes one whole frame.
func writeFrame(t *testing.T, nc net.Conn, op, flags byte, id uint32, payload []byte) {
	t.Helper()
	writeRaw(t, nc, append(header(op, flags, 0, id, uint32(len(payload))), payload...))
}

// writeRaw writes bytes, whatever they are.
func writeRaw(t *testing.T, nc net.Conn, p []byte) {
	t.Helper()
	require.NoError(t, nc.SetWriteDeadline(time.Now().Add(frameWait)))
	_, err := nc.Write(p)
	require.NoError(t, err)
}

// tryReadFrame reads one frame, waiting at most frameWait.
func tryReadFrame(nc net.Conn) (wireFrame, error) {
	// On a net.Pipe whose other end is closed this fails, and so will the
	// read, with io.EOF.
	nc.SetReadDeadline(time.Now().Add(frameWait))
	var h [headerLen]byte
	if _, err := io.ReadFull(nc, h[:]); err != nil {
		return wireFrame{}, err
	}
	f := wireFrame{
		op: h[0], flags: h[1],
		code: binary.BigEndian.Uint16(h[2:]),
		id:   binary.BigEndian.Uint32(h[4:]),
	}
	n := binary.BigEndian.Uint32(h[8:])
	if n > 1<<20 {
		return f, fmt.Errorf("the broker announced a frame of %d bytes", n)
	}
	f.payload = make([]byte, n)
	if _, err := io.ReadFull(nc, f.payload); err != nil {
		return f, fmt.Errorf("reading a payload of %d bytes: %w", n, err)
	}
	return f, nil
}

// readFrame reads one frame, waiting at most frameWait.
func readFrame(t *testing.T, nc net.Conn) wireFrame {
	t.Helper()
	f, err := tryReadFrame(nc)
	require.NoError(t, err, "reading a frame from the broker")
	return f
}

// readUntilClosed reads frames until the broker closes the connection.
func readUntilClosed(t *testing.T, nc net.Conn) []wireFrame {
	t.Helper()
	var got []wireFrame
	for {
		f, err := tryReadFrame(nc)
		if err != nil {
			require.ErrorIs(t, err, io.EOF)
			return got
		}
		got = append(got, f)
	}
}

// requireErrorFrame checks that f is an Error frame with code answering
// request id, and returns its message.
func requireErrorFrame(t *testing.T, f wireFrame, code uint16, id uint32) string {
	t.Helper()
	require.Equal(t, opError, f.op, "not an Error frame: %v", f)
	assert.Equal(t, code, f.code, "error code: %v", f)
	assert.Equal(t, id, f.id, "request id: %v", f)
	return f.message()
}

// requireClosed checks that the broker closed the connection: a read ends
// with an error other than our own deadline.
func requireClosed(t *testing.T, nc net.Conn) {
	t.Helper()
	f, err := tryReadFrame(nc)
	require.Error(t, err, "the broker sent %v instead of closing", f)
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "the broker did not close the connection within %v", frameWait)
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// helloPayload is the payload of a Hello.
func helloPayload(version byte, token string) []byte {
	return appendStr(append(appendStr(nil, helloMagic), version), token)
}

// helloFrame is a Hello frame with payload p.
func helloFrame(p []byte) []byte {
	return append(header(opHello, 0, 0, 0, uint32(len(p))), p...)
}

// lockPayload is the payload of a Lock of key: no TTL, limit 1, priority 0,
// no owner.
func lockPayload(key string) []byte {
	b := appendStr(nil, key)
	b = binary.AppendUvarint(b, 0) // ttl
	b = binary.AppendUvarint(b, 1) // limit
	b = binary.AppendVarint(b, 0)  // priority
	return appendStr(b, "")        // owner
}

// handshake says Hello and checks the Welcome.
func handshake(t *testing.T, nc net.Conn, token string) {
	t.Helper()
	writeFrame(t, nc, opHello, 0, 0, helloPayload(protocolVersion, token))
	f := readFrame(t, nc)
	require.Equal(t, opWelcome, f.op, "the handshake was answered with %v", f)
	require.NotEmpty(t, f.payload)
	assert.Equal(t, byte(protocolVersion), f.payload[0])
}

// ping sends a Ping and requires its Pong: the connection still works.
func ping(t *testing.T, nc net.Conn, id uint32) {
	t.Helper()
	writeFrame(t, nc, opPing, 0, id, nil)
	f := readFrame(t, nc)
	require.Equal(t, opPong, f.op, "a Ping was answered with %v", f)
	require.Equal(t, id, f.id)
}

// dialRaw opens a TCP connection to a broker address made by listen.
func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", strings.TrimPrefix(addr, "tcp://"), frameWait)
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	return nc
}

// servePipe returns the client end of a net.Pipe the broker serves.
func servePipe(b *lmx.Broker) net.Conn {
	c1, c2 := net.Pipe()
	b.ServeConn(c2)
	return c1
}

// pipeDialer makes a Client's connections net.Pipes to b.
func pipeDialer(b *lmx.Broker) lmx.ClientOption {
	return lmx.WithDialer(func(context.Context, string, string) (net.Conn, error) { return servePipe(b), nil })
}

// A bystander is a well-behaved client of the broker under attack. It holds
// a lock from before the bad client comes until the end.
type bystander struct {
	c    *lmx.Client
	held *lmx.Lease
	n    int
}

const bystanderKey = "bystander/held"

func newBystander(t *testing.T, c *lmx.Client) *bystander {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), frameWait)
	defer cancel()
	l, err := c.Lock(ctx, bystanderKey)
	require.NoError(t, err)
	return &bystander{c: c, held: l}
}

// check requires that the bystander still holds its lock and can lock and
// unlock another key.
func (s *bystander) check(t *testing.T) {
	t.Helper()
	select {
	case <-s.held.Done():
		require.Failf(t, "the bystander lost its lock", "%v", s.held.Err())
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), frameWait)
	defer cancel()
	_, err := s.c.TryLock(ctx, bystanderKey)
	require.ErrorIs(t, err, lmx.ErrLocked, "the broker no longer holds the bystander's lock")
	s.n++
	l, err := s.c.Lock(ctx, fmt.Sprintf("bystander/other/%d", s.n))
	require.NoError(t, err, "the bystander cannot lock")
	require.NoError(t, l.Unlock(ctx), "the bystander cannot unlock")
	require.NoError(t, s.held.Err())
}

// tcpBroker starts a broker on 127.0.0.1 with a bystander connected.
func tcpBroker(t *testing.T, opts ...lmx.BrokerOption) (string, *bystander) {
	t.Helper()
	addr, _ := listen(t, "tcp", opts...)
	ctx, cancel := context.WithTimeout(context.Background(), frameWait)
	defer cancel()
	c, err := lmx.Dial(ctx, addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return addr, newBystander(t, c)
}

// A client whose first frame is not a well-formed Hello is answered with an
// Error frame, code 8, and disconnected.
func TestProtocolNotAHello(t *testing.T) {
	addr, by := tcpBroker(t)
	tests := []struct {
		name  string
		bytes []byte
		want  string // in the message
	}{
		{"HTTP request", []byte("GET / HTTP/1.1\r\n\r\n"), "not an lmx client"},
		{"Ping first", header(opPing, 0, 0, 1, 0), "op 0x08"},
		{"bad magic", helloFrame(appendStr(append(appendStr(nil, "HTTP"), 1), "")), "bad hello"},
		{"no token", helloFrame(append(appendStr(nil, helloMagic), 1)), "bad hello"},
		{"trailing byte", helloFrame(append(helloPayload(1, ""), 0)), "bad hello"},
		{"Hello over 4096 bytes", header(opHello, 0, 0, 0, 4097), "4097 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc := dialRaw(t, addr)
			writeRaw(t, nc, tt.bytes)
			msg := requireErrorFrame(t, readFrame(t, nc), codeProtocol, 0)
			assert.Contains(t, msg, lmx.ErrProtocol.Error())
			assert.Contains(t, msg, tt.want)
			requireClosed(t, nc)
			by.check(t)
		})
	}
}

// A Hello of another version is refused with code 8, naming both versions.
func TestProtocolWrongVersion(t *testing.T) {
	addr, by := tcpBroker(t)
	for _, v := range []byte{0, 1, 4, 255} {
		t.Run(fmt.Sprint("version ", v), func(t *testing.T) {
			nc := dialRaw(t, addr)
			writeFrame(t, nc, opHello, 0, 0, helloPayload(v, ""))
			msg := requireErrorFrame(t, readFrame(t, nc), codeProtocol, 0)
			assert.Contains(t, msg, lmx.ErrProtocol.Error())
			assert.Contains(t, msg, "version")
			assert.Regexp(t, regexp.MustCompile(fmt.Sprintf(`\b%d\b`, v)), msg, "the client's version is not named")
			assert.Regexp(t, regexp.MustCompile(fmt.Sprintf(`\b%d\b`, protocolVersion)), msg, "the broker's version is not named")
			requireClosed(t, nc)
			by.check(t)
		})
	}
}

// logBuffer is a log destination safe for the broker's goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// A Hello with the wrong token is refused with code 9 and logged; Dial with
// the wrong token fails with ErrAuth, and with the right one works.
func TestProtocolWrongToken(t *testing.T) {
	var logs logBuffer
	addr, _ := listen(t, "tcp", lmx.WithAuthToken("s3cret"), lmx.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	ctx, cancel := context.WithTimeout(context.Background(), 2*frameWait)
	defer cancel()
	good, err := lmx.Dial(ctx, addr, lmx.WithDialToken("s3cret"))
	require.NoError(t, err)
	defer good.Close()
	by := newBystander(t, good)

	nc := dialRaw(t, addr)
	writeFrame(t, nc, opHello, 0, 0, helloPayload(protocolVersion, "wrong"))
	msg := requireErrorFrame(t, readFrame(t, nc), codeAuth, 0)
	assert.Contains(t, msg, lmx.ErrAuth.Error())
	requireClosed(t, nc)
	by.check(t)

	_, err = lmx.Dial(ctx, addr, lmx.WithDialToken("wrong"))
	require.ErrorIs(t, err, lmx.ErrAuth)
	_, err = lmx.Dial(ctx, addr)
	require.ErrorIs(t, err, lmx.ErrAuth, "no token")
	c, err := lmx.Dial(ctx, addr, lmx.WithDialToken("s3cret"))
	require.NoError(t, err)
	l, err := c.Lock(ctx, "k")
	require.NoError(t, err)
	require.NoError(t, l.Unlock(ctx))
	require.NoError(t, c.Close())
	by.check(t)

	// The broker logs each refusal after sending it: wait for the three.
	deadline := time.Now().Add(frameWait)
	for strings.Count(logs.String(), "refused a client") < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	out := logs.String()
	assert.Equal(t, 3, strings.Count(out, "refused a client"), "refusals logged:\n%s", out)
	assert.Contains(t, out, "wrong auth token")
	assert.Contains(t, out, "level=WARN")
	assert.NotContains(t, out, "s3cret", "the broker logged its token")
}

// An unknown op after the handshake is answered with Error code 8 for its
// request id, and the session goes on.
func TestProtocolUnknownOp(t *testing.T) {
	addr, by := tcpBroker(t)
	nc := dialRaw(t, addr)
	handshake(t, nc, "")

	writeFrame(t, nc, 0x7f, 0, 42, []byte("junk"))
	msg := requireErrorFrame(t, readFrame(t, nc), codeProtocol, 42)
	assert.Contains(t, msg, lmx.ErrProtocol.Error())
	assert.Contains(t, msg, "0x7f")
	by.check(t)
	ping(t, nc, 43)

	// Ops a client must never send, back to back in one write.
	var burst []byte
	for i, op := range []byte{0x00, opHello, opWelcome, opPong, 0xff} {
		burst = append(burst, header(op, 0, 0, uint32(100+i), 0)...)
	}
	writeRaw(t, nc, burst)
	for i := range 5 {
		requireErrorFrame(t, readFrame(t, nc), codeProtocol, uint32(100+i))
	}
	ping(t, nc, 44)
	by.check(t)
}

// A Lock asked with KeepAlive is renewed by the broker, as an in-process
// one is, though the client never sends an Extend: it outlives three TTLs,
// and expires at its KeepAlive bound, reported by an Ended frame.
func TestProtocolKeepAliveRenewedByBroker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := lmx.NewBroker(lmx.WithHeartbeat(time.Second, time.Hour))
		defer b.Close()
		nc := servePipe(b)
		defer nc.Close()
		handshake(t, nc, "")
		const reasonExpired = 2
		p := appendStr(nil, "k")
		p = binary.AppendUvarint(p, uint64(time.Second)) // ttl
		p = binary.AppendUvarint(p, 1)                   // limit
		p = binary.AppendVarint(p, 0)                    // priority
		p = appendStr(p, "")                             // owner
		p = binary.AppendUvarint(p, uint64(5*time.Second))
		writeFrame(t, nc, opLock, flagKeepAlive, 1, p)
		id, _ := grant(t, expectFrame(t, nc, opGranted, 1))
		start := time.Now()

		time.Sleep(3 * time.Second)
		_, err := b.TryLock(t.Context(), "k")
		require.ErrorIs(t, err, lmx.ErrLocked, "the broker did not renew the lease")
		f := expectFrame(t, nc, opEnded, 0)
		assert.Equal(t, uint16(reasonExpired), f.code)
		assert.Equal(t, releasePayload("k", id), f.payload)
		assert.Equal(t, 5*time.Second, time.Since(start), "the lease did not expire at its KeepAlive bound")
	})
}

// A Release through the session that holds the lease is answered OK and
// nothing more: the OK says that one grant is undone. A lease of the session
// released otherwise, by id from another session or in-process, is told of
// by an Ended frame (reason 1, released).
func TestProtocolEndedOnlyForReleasesFromElsewhere(t *testing.T) {
	b := lmx.NewBroker()
	defer b.Close()
	nc, other := servePipe(b), servePipe(b)
	handshake(t, nc, "")
	handshake(t, other, "")
	const codeNotHeld, reasonReleased = 2, 1

	writeFrame(t, nc, opLock, 0, 1, lockPayload("a"))
	a, _ := grant(t, expectFrame(t, nc, opGranted, 1))
	writeFrame(t, nc, opRelease, 0, 2, releasePayload("a", a))
	expectFrame(t, nc, opOK, 2)
	ping(t, nc, 3) // no Ended frame came before the Pong

	owned := appendStr(nil, "r")
	owned = binary.AppendUvarint(owned, 0) // ttl
	owned = binary.AppendUvarint(owned, 1) // limit
	owned = binary.AppendVarint(owned, 0)  // priority
	owned = appendStr(owned, "o")          // owner
	writeFrame(t, nc, opLock, 0, 4, owned)
	r, _ := grant(t, expectFrame(t, nc, opGranted, 4))
	writeFrame(t, nc, opLock, 0, 5, owned)
	again, _ := grant(t, expectFrame(t, nc, opGranted, 5))
	require.Equal(t, r, again, "the owner did not re-enter its lease")
	for id := uint32(6); id <= 7; id++ {
		writeFrame(t, nc, opRelease, 0, id, releasePayload("r", r))
		expectFrame(t, nc, opOK, id)
	}
	writeFrame(t, nc, opRelease, 0, 8, releasePayload("r", r))
	requireErrorFrame(t, readFrame(t, nc), codeNotHeld, 8)

	writeFrame(t, nc, opLock, 0, 9, lockPayload("c"))
	c, _ := grant(t, expectFrame(t, nc, opGranted, 9))
	writeFrame(t, other, opRelease, 0, 1, releasePayload("c", c))
	expectFrame(t, other, opOK, 1)
	f := expectFrame(t, nc, opEnded, 0)
	assert.Equal(t, uint16(reasonReleased), f.code)
	assert.Equal(t, releasePayload("c", c), f.payload, "the Ended frame names another lease")

	writeFrame(t, nc, opLock, 0, 10, lockPayload("d"))
	d, _ := grant(t, expectFrame(t, nc, opGranted, 10))
	require.NoError(t, b.Release(t.Context(), "d", d))
	f = expectFrame(t, nc, opEnded, 0)
	assert.Equal(t, uint16(reasonReleased), f.code)
	assert.Equal(t, releasePayload("d", d), f.payload, "the Ended frame names another lease")
}
