package lmx

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fuzzMaxFrame is the frame limit of the brokers FuzzDecode talks to: small,
// so that completing a frame the input leaves unfinished stays cheap.
const fuzzMaxFrame = 4096

// fuzzPingID is the request id of the Ping FuzzDecode sends after the input.
const fuzzPingID = 0xfffffff0

// FuzzDecode feeds arbitrary bytes to every payload decoder, checking that
// none panics and that whatever decodes re-encodes to the same value, and to
// a live broker session, checking that the broker either answers a Ping sent
// after them or closes the connection with an Error frame, and that it goes
// on serving new connections either way.
func FuzzDecode(f *testing.F) {
	for _, seed := range fuzzSeeds() {
		f.Add(seed, uint16(len(seed)/2))
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint16) {
		checkDecoders(t, data, uint8(split))
		checkSession(t, data, int(split)%(len(data)+1))
	})
}

// payload strips the header off a frame an encoder made.
func payload(f []byte) []byte { return f[headerLen:] }

// fuzzSeeds returns a valid payload of every op that has one, a few
// malformed payloads, and a few whole frame streams for the session.
func fuzzSeeds() [][]byte {
	id := ulid.MustParse("01HZY3M6Z0K9V3T8W2Q5R7S4XA")
	exp := time.Unix(1_700_000_000, 123456789)
	key := "orders/42"
	lockReq := request{ttl: 30 * time.Second, limit: 3, priority: -7, owner: "worker-1", preempt: -1, lockDelay: -1}

	lock := payload(appendLock(nil, 1, key, &lockReq, true))
	release := payload(appendRelease(nil, 1, key, id))
	seeds := [][]byte{
		payload(appendHello(nil, helloMsg{version: protocolVersion, token: "s3cret"})),
		lock,
		payload(appendLock(nil, 1, key, &request{ttl: time.Second, keepAlive: time.Minute, limit: 1, preempt: time.Second, lockDelay: 0}, false)),
		release,
		payload(appendExtend(nil, 1, extendMsg{key: key, id: id, ttl: time.Minute})),
		payload(appendKeyOp(nil, opInspect, 1, key)),
		payload(appendList(nil, 1, listMsg{prefix: "orders/", limit: 100})),
		payload(appendStop(nil, opStopped, stopMsg{key: key, seq: 7})),
		payload(appendWelcome(nil, welcomeMsg{version: protocolVersion, session: id, heartbeat: time.Second, timeout: 5 * time.Second, maxFrame: 1 << 20, maxKeyLen: 1024})),
		payload(appendGranted(nil, 1, grantedMsg{id: id, token: 12345, exp: exp})),
		payload(appendExpiry(nil, 1, exp)),
		payload(appendError(nil, 1, codeBusy, "busy")),
		payload(appendInfo(nil, 1, &KeyInfo{
			Limit: 2,
			Holders: []HolderInfo{
				{ID: id, Token: 99, Owner: "a", Shared: true, Count: 2, Expires: exp},
				{ID: id, Token: 100, Owner: "", Shared: false, Count: 1},
			},
			Waiters: []WaiterInfo{{Owner: "w", Priority: -3, Shared: true}, {Priority: 5}},
		})),
		payload(appendStatsOK(nil, 1, &Stats{Keys: 1, Holders: 2, Waiters: 3, Sessions: 4, Grants: 5, Expiries: 6, Forced: 7, Preemptions: 8, SessionLost: 1 << 40})),
		payload(appendEvent(nil, 1, &Event{Type: EventExpired, Key: key, ID: id, Token: 3, Owner: "o", Time: exp, Missed: 2})),
		payload(appendKeys(nil, 1, []KeyStat{{Key: key, Limit: 1, Holders: 1, Waiters: 4}})),
		payload(appendNext(nil, 1, nextMsg{pred: id, id: id, token: 5})),
	}

	// Whole frames, as a session reads them after the handshake.
	var stream []byte
	stream = appendLock(stream, 1, "k", &request{limit: 1, preempt: -1, lockDelay: -1}, true)
	stream = appendLock(stream, 2, "k", &request{limit: 1, preempt: -1, lockDelay: -1}, true)
	stream = appendKeyOp(stream, opInspect, 3, "k")
	stream = appendEmpty(stream, opCancel, 2)
	stream = appendEmpty(stream, opStats, 4)
	stream = appendRelease(stream, 5, "k", id)
	stream = appendExtend(stream, 6, extendMsg{key: "k", id: id, ttl: time.Second})
	stream = appendKeyOp(stream, opForce, 7, "k")
	stream = appendEmpty(stream, opPing, 8)
	shared := appendLock(nil, 9, "s", &request{ttl: time.Hour, limit: 2, shared: true, keepOnDisconnect: true, preempt: -1, lockDelay: -1}, false)
	unknown, start := beginFrame(nil, 0x7f, 0, 0, 10)
	unknown = endFrame(append(unknown, "junk"...), start)
	oversized := appendEmpty(nil, opLock, 11)
	binary.BigEndian.PutUint32(oversized[8:], 1<<20)
	againHello := appendHello(nil, helloMsg{version: protocolVersion})

	return append(seeds,
		// Malformed: empty, truncated, trailing bytes, a string longer than
		// the payload, an overlong varint, a huge count.
		[]byte{},
		lock[:len(lock)-1],
		append(append([]byte(nil), release...), 0),
		[]byte{0xff, 0xff, 0xff, 0xff, 0x0f, 'k'},
		bytes.Repeat([]byte{0xff}, 11),
		[]byte{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		[]byte("GET / HTTP/1.1\r\n\r\n"),
		// Frame streams.
		stream, shared, unknown, oversized, againHello,
		append(append([]byte(nil), stream...), shared[:7]...),  // ends inside a header
		append(append([]byte(nil), shared...), stream[:20]...), // ends inside a payload
	)
}

// opCodecs checks each op's codec on a payload, named as PROTOCOL.md names
// the op: what decodes must re-encode, into a frame of that op, to the same
// value, and must fail if cut short by a byte or given one more. flags are
// the frame's flags, or its code where the code carries a field. An op
// without a payload must be encoded as an empty frame.
var opCodecs = map[op]struct {
	name  string
	check func(t *testing.T, data []byte, flags uint8)
}{
	opHello: {"Hello", func(t *testing.T, data []byte, _ uint8) {
		roundTrip(t, opHello, data, decodeHello, func(m helloMsg) []byte { return appendHello(nil, m) }, nil)
	}},
	opLock: {"Lock", func(t *testing.T, data []byte, flags uint8) {
		flags &= flagKeepAlive<<1 - 1 // the flags the codec knows
		roundTrip(t, opLock, data,
			func(p []byte) (lockMsg, error) { return decodeLock(flags, p) },
			func(m lockMsg) []byte { return appendLock(nil, 1, m.key, &m.req, m.flags&flagWait != 0) },
			nil)
	}},
	opRelease: {"Release", leaseOp(opRelease)},
	opExtend: {"Extend", func(t *testing.T, data []byte, _ uint8) {
		roundTrip(t, opExtend, data, decodeExtend, func(m extendMsg) []byte { return appendExtend(nil, 1, m) }, nil)
	}},
	opForce:   {"ForceUnlock", keyOp(opForce)},
	opInspect: {"Inspect", keyOp(opInspect)},
	opStats:   {"Stats", emptyOp(opStats)},
	opPing:    {"Ping", emptyOp(opPing)},
	opCancel:  {"Cancel", emptyOp(opCancel)},
	opWatch:   {"Watch", keyOp(opWatch)},
	opList: {"List", func(t *testing.T, data []byte, _ uint8) {
		roundTrip(t, opList, data, decodeList, func(m listMsg) []byte { return appendList(nil, 1, m) }, nil)
	}},
	opStopped: {"Stopped", stopOp(opStopped)},
	opWelcome: {"Welcome", func(t *testing.T, data []byte, _ uint8) {
		roundTrip(t, opWelcome, data, decodeWelcome, func(m welcomeMsg) []byte { return appendWelcome(nil, m) }, nil)
	}},
	opGranted: {"Granted", func(t *testing.T, data []byte, _ uint8) {
		roundTrip(t, opGranted, data, decodeGranted, func(m grantedMsg) []byte { return appendGranted(nil, 1, m) }, nil)
	}},
	opOK: {"OK", func(t *testing.T, data []byte, _ uint8) {
		emptyOp(opOK)(t, data, 0)
		roundTrip(t, opOK, data, decodeExpiry, func(exp time.Time) []byte { return appendExpiry(nil, 1, exp) }, nil)
	}},
	opError: {"Error", func(t *testing.T, data []byte, flags uint8) {
		roundTrip(t, opError, data, decodeErrorMsg, func(msg string) []byte { return appendError(nil, 1, uint16(flags), msg) }, nil)
		if msg, err := decodeErrorMsg(data); err == nil && msg != "" {
			f := appendError(nil, 1, uint16(flags), msg)
			assert.Equal(t, codeError(uint16(flags), msg), decodeError(parseHeader(f).code, payload(f)))
		}
	}},
	opEnded: {"Ended", leaseOp(opEnded)},
	opInfo: {"Info", func(t *testing.T, data []byte, _ uint8) {
		roundTrip(t, opInfo, data,
			func(p []byte) (KeyInfo, error) { return decodeInfo("k", p) },
			func(ki KeyInfo) []byte { return appendInfo(nil, 1, &ki) },
			func(ki KeyInfo) KeyInfo { // the encoder lists at most maxListed of each, by design
				ki.Holders = ki.Holders[:min(len(ki.Holders), maxListed)]
				ki.Waiters = ki.Waiters[:min(len(ki.Waiters), maxListed)]
				return ki
			})
	}},
	opStatsOK: {"StatsOK", func(t *testing.T, data []byte, _ uint8) {
		roundTrip(t, opStatsOK, data, decodeStatsOK, func(s Stats) []byte { return appendStatsOK(nil, 1, &s) }, nil)
	}},
	opPong: {"Pong", emptyOp(opPong)},
	opEvent: {"Event", func(t *testing.T, data []byte, flags uint8) {
		code := uint16(flags % 10)
		roundTrip(t, opEvent, data,
			func(p []byte) (Event, error) { return decodeEvent(code, p) },
			func(ev Event) []byte { return appendEvent(nil, 1, &ev) },
			nil)
	}},
	opRevoke: {"Revoke", leaseOp(opRevoke)},
	opKeys: {"Keys", func(t *testing.T, data []byte, _ uint8) {
		roundTrip(t, opKeys, data, decodeKeys, func(keys []KeyStat) []byte { return appendKeys(nil, 1, keys) }, nil)
	}},
	opNext: {"Next", func(t *testing.T, data []byte, _ uint8) {
		roundTrip(t, opNext, data, decodeNext, func(m nextMsg) []byte { return appendNext(nil, 1, m) }, nil)
	}},
	opStop: {"Stop", stopOp(opStop)},
}

func leaseOp(o op) func(*testing.T, []byte, uint8) {
	return func(t *testing.T, data []byte, flags uint8) {
		dec := func(p []byte) (leaseMsg, error) {
			key, id, err := decodeLeaseMsg(p)
			return leaseMsg{key: string(key), id: id}, err
		}
		roundTrip(t, o, data, dec, func(m leaseMsg) []byte { return appendLeaseOp(nil, o, uint16(flags), 0, m) }, nil)
	}
}

func keyOp(o op) func(*testing.T, []byte, uint8) {
	return func(t *testing.T, data []byte, _ uint8) {
		roundTrip(t, o, data, decodeKey, func(key string) []byte { return appendKeyOp(nil, o, 1, key) }, nil)
	}
}

func stopOp(o op) func(*testing.T, []byte, uint8) {
	return func(t *testing.T, data []byte, _ uint8) {
		roundTrip(t, o, data, decodeStop, func(m stopMsg) []byte { return appendStop(nil, o, m) }, nil)
	}
}

func emptyOp(o op) func(*testing.T, []byte, uint8) {
	return func(t *testing.T, _ []byte, _ uint8) {
		f := appendEmpty(nil, o, 1)
		require.Equal(t, header{op: o, id: 1}, parseHeader(f))
		require.Len(t, f, headerLen)
	}
}

// roundTrip decodes data with dec; if it decodes, enc must make a frame of
// op o whose payload decodes to the same value (as norm, if not nil, says
// the encoder keeps it), and the payload cut by a byte, or with one more,
// must not decode.
func roundTrip[M any](t *testing.T, o op, data []byte, dec func([]byte) (M, error), enc func(M) []byte, norm func(M) M) {
	t.Helper()
	m, err := dec(data)
	if err != nil {
		return
	}
	f := enc(m)
	h := parseHeader(f)
	require.Equal(t, o, h.op, "op 0x%02x: the encoder made op 0x%02x", o, h.op)
	require.Equal(t, len(f)-headerLen, int(h.length), "op 0x%02x: the header's length", o)
	again, err := dec(payload(f))
	require.NoError(t, err, "op 0x%02x: re-encoded %+v", o, m)
	if norm != nil {
		m = norm(m)
	}
	require.Equal(t, m, again, "op 0x%02x round trip", o)
	requireStrict(t, fmt.Sprintf("op 0x%02x", o), data, func(p []byte) error { _, err := dec(p); return err })
}

// checkDecoders runs every op's codec on data.
func checkDecoders(t *testing.T, data []byte, flags uint8) {
	for _, c := range opCodecs {
		c.check(t, data, flags)
	}
}

// The codec covers every op PROTOCOL.md lists, and each seed decodes as
// the op it was made for.
func TestCodecCoversEveryOp(t *testing.T) {
	doc, err := os.ReadFile("PROTOCOL.md")
	require.NoError(t, err)
	rows := regexp.MustCompile("(?m)^\\| 0x([0-9a-f]{2}) \\| (\\w+) \\|").FindAllStringSubmatch(string(doc), -1)
	require.NotEmpty(t, rows)
	seen := map[op]bool{}
	for _, row := range rows {
		v, err := strconv.ParseUint(row[1], 16, 8)
		require.NoError(t, err)
		c, ok := opCodecs[op(v)]
		if assert.True(t, ok, "op 0x%s %s has no codec", row[1], row[2]) {
			assert.Equal(t, row[2], c.name, "op 0x%s", row[1])
		}
		seen[op(v)] = true
	}
	for o, c := range opCodecs {
		assert.True(t, seen[o], "op 0x%02x %s is not in PROTOCOL.md", o, c.name)
	}
}

// requireStrict checks that a payload that decodes no longer does when its
// last byte is cut or a byte is added: every field is required, and trailing
// bytes are refused.
func requireStrict(t *testing.T, name string, p []byte, decode func([]byte) error) {
	t.Helper()
	if len(p) > 0 {
		require.Error(t, decode(p[:len(p)-1]), "%s: decoded with its last byte cut: %x", name, p)
	}
	require.Error(t, decode(append(p[:len(p):len(p)], 0)), "%s: decoded with a trailing byte: %x", name, p)
}

// rawFrame is a frame read off the wire.
type rawFrame struct {
	header
	payload []byte
}

// predictStream walks a stream of frames as the broker reads it. It returns
// the bytes that complete a frame the stream leaves unfinished (zeros), and
// the header of the first frame over fuzzMaxFrame, if any: the broker must
// answer that one with an Error frame and close.
func predictStream(stream []byte) (pad []byte, over *header) {
	for len(stream) > 0 {
		if len(stream) < headerLen {
			pad = make([]byte, headerLen-len(stream))
			var hdr [headerLen]byte
			copy(hdr[:], stream)
			h := parseHeader(hdr[:])
			if h.length > fuzzMaxFrame {
				return pad, &h
			}
			return append(pad, make([]byte, h.length)...), nil
		}
		h := parseHeader(stream)
		if h.length > fuzzMaxFrame {
			return nil, &h
		}
		stream = stream[headerLen:]
		if int(h.length) > len(stream) {
			return make([]byte, int(h.length)-len(stream)), nil
		}
		stream = stream[h.length:]
	}
	return nil, nil
}

// checkSession handshakes with a fresh broker over net.Pipe, writes data in
// two writes (data[:cut], data[cut:]), completes a frame it leaves
// unfinished, and sends a Ping. The broker must answer the Ping, or, if the
// stream announced a frame over its limit, answer that frame with an Error
// frame (code 8) and close. Then a new connection must work.
func checkSession(t *testing.T, data []byte, cut int) {
	b := NewBroker(WithMaxFrame(fuzzMaxFrame), WithLogger(slog.New(slog.DiscardHandler)))
	defer b.Close()
	nc, bc := net.Pipe()
	b.ServeConn(bc)
	defer nc.Close()
	require.NoError(t, nc.SetDeadline(time.Now().Add(2*time.Second)))

	// The handshake, as Client.handshake makes it.
	_, err := nc.Write(appendHello(nil, helloMsg{version: protocolVersion}))
	require.NoError(t, err)
	welcome, err := readRawFrame(nc)
	require.NoError(t, err)
	require.Equal(t, opWelcome, welcome.op)

	// Read everything the broker sends, as net.Pipe has no buffer: a broker
	// blocked writing an answer would read nothing more.
	var (
		frames  []rawFrame
		readErr error
		pong    = make(chan struct{})
		done    = make(chan struct{})
	)
	go func() {
		defer close(done)
		seen := false
		for {
			f, err := readRawFrame(nc)
			if err != nil {
				readErr = err
				return
			}
			frames = append(frames, f)
			if f.op == opPong && f.id == fuzzPingID && !seen {
				seen = true
				close(pong)
			}
		}
	}()

	pad, over := predictStream(data)
	// Write errors are expected once the broker has closed; what it answered
	// is checked below.
	nc.Write(data[:cut])
	nc.Write(data[cut:])
	if len(pad) > 0 {
		nc.Write(pad)
	}
	nc.Write(appendEmpty(nil, opPing, fuzzPingID))

	if over == nil {
		select {
		case <-pong:
		case <-done:
			require.Failf(t, "no pong", "the broker ended the session after a stream of whole frames within its limit: %v; answers: %v", readErr, summarize(frames))
		}
	} else {
		<-done // the broker closes, or the deadline passes
		require.ErrorIs(t, readErr, io.EOF, "the broker did not close after a frame of %d bytes; answers: %v", over.length, summarize(frames))
		found := false
		for _, f := range frames {
			if f.op == opError && f.code == codeProtocol && f.id == over.id {
				found = true
			}
		}
		require.True(t, found, "no Error frame (code 8, id %d) for a frame of %d bytes; answers: %v", over.id, over.length, summarize(frames))
	}

	checkServesNewConn(t, b)
	nc.Close()
	<-done
}

// checkServesNewConn checks that b serves a new connection, whatever became
// of the one fuzzed before it.
func checkServesNewConn(t *testing.T, b *Broker) {
	dial := func(context.Context, string, string) (net.Conn, error) {
		c1, c2 := net.Pipe()
		b.ServeConn(c2)
		return c1, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := Dial(ctx, "pipe:0", WithDialer(dial))
	require.NoError(t, err, "a new connection after the fuzzed one")
	defer c.Close()
	l, err := c.Lock(ctx, "fuzz-check/"+ulid.Make().String())
	require.NoError(t, err)
	require.NoError(t, l.Unlock(ctx))
}

// readRawFrame reads one frame, refusing one longer than a broker may send.
func readRawFrame(r io.Reader) (rawFrame, error) {
	var hdr [headerLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return rawFrame{}, err
	}
	f := rawFrame{header: parseHeader(hdr[:])}
	if f.length > 4<<20 {
		return f, fmt.Errorf("frame of %d bytes", f.length)
	}
	f.payload = make([]byte, f.length)
	if _, err := io.ReadFull(r, f.payload); err != nil {
		return f, err
	}
	return f, nil
}

// summarize describes frames for a failure message.
func summarize(frames []rawFrame) []string {
	var s []string
	for _, f := range frames {
		desc := fmt.Sprintf("op 0x%02x id %d code %d", f.op, f.id, f.code)
		if f.op == opError {
			msg, _ := decodeErrorMsg(f.payload)
			desc += fmt.Sprintf(" %q", msg)
		}
		s = append(s, desc)
	}
	return s
}

func TestFrameHeaderRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		prefix  []byte // what the buffer held before the frame
		op      op
		flags   uint8
		code    uint16
		id      uint32
		payload []byte
	}{
		{name: "ping", op: opPing, id: 1},
		{name: "zero id and empty body", op: opStats, payload: []byte{}},
		{name: "lock with flags", op: opLock, flags: flagWait | flagShared | flagKeepOnDisconnect, id: 7, payload: []byte("\x01k\x00\x01\x00\x00")},
		{name: "error with code", op: opError, code: codeBusy, id: 0xdeadbeef, payload: []byte("\x04busy")},
		{name: "all ones", op: 0xff, flags: 0xff, code: 0xffff, id: 0xffffffff, payload: []byte{0xff}},
		{name: "code high byte", op: opEnded, code: 0x0102, id: 0x01020304, payload: bytes.Repeat([]byte{0xab}, 300)},
		{name: "after another frame", prefix: appendEmpty(nil, opPong, 3), op: opOK, id: 4, payload: []byte("ok")},
		{name: "large payload", prefix: []byte("xyz"), op: opInfo, id: 1 << 31, payload: bytes.Repeat([]byte{1, 2, 3}, 70000)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := append([]byte(nil), tt.prefix...)
			b, start := beginFrame(prefix, tt.op, tt.flags, tt.code, tt.id)
			b = endFrame(append(b, tt.payload...), start)
			require.True(t, bytes.Equal(tt.prefix, b[:len(tt.prefix)]), "frame changed what the buffer held")
			f := b[len(tt.prefix):]
			require.Len(t, f, headerLen+len(tt.payload))
			h := parseHeader(f)
			assert.Equal(t, header{op: tt.op, flags: tt.flags, code: tt.code, id: tt.id, length: uint32(len(tt.payload))}, h)
			assert.True(t, bytes.Equal(tt.payload, f[headerLen:]), "payload")

			// The layout PROTOCOL.md gives, byte by byte.
			assert.Equal(t, byte(tt.op), f[0])
			assert.Equal(t, tt.flags, f[1])
			assert.Equal(t, tt.code, binary.BigEndian.Uint16(f[2:]))
			assert.Equal(t, tt.id, binary.BigEndian.Uint32(f[4:]))
			assert.Equal(t, uint32(len(tt.payload)), binary.BigEndian.Uint32(f[8:]))
		})
	}
}

func TestErrorCodes(t *testing.T) {
	// The table of PROTOCOL.md: every sentinel with its code.
	sentinels := []struct {
		code uint16
		err  error
	}{
		{1, ErrLocked},
		{2, ErrNotHeld},
		{3, ErrLimitMismatch},
		{4, ErrInvalidKey},
		{5, ErrInvalidOption},
		{6, ErrClosed},
		{8, ErrProtocol},
		{9, ErrAuth},
		{10, ErrBusy},
	}
	for _, s := range sentinels {
		t.Run(s.err.Error(), func(t *testing.T) {
			assert.Equal(t, s.code, errorCode(s.err), "errorCode of the sentinel")
			assert.Equal(t, s.code, errorCode(fmt.Errorf("%w: with details", s.err)), "errorCode of a wrapped sentinel")

			assert.Same(t, s.err, codeError(s.code, ""), "codeError without a message")
			assert.Same(t, s.err, codeError(s.code, s.err.Error()), "codeError with the sentinel's own message")
			err := codeError(s.code, "the broker's words")
			assert.ErrorIs(t, err, s.err)
			assert.EqualError(t, err, "the broker's words")
			for _, other := range sentinels {
				if other.code != s.code {
					assert.NotErrorIs(t, err, other.err, "code %d also matches code %d's sentinel", s.code, other.code)
				}
			}

			// Over the wire and back: the broker's error, as the client sees it.
			wrapped := fmt.Errorf("%w: with details", s.err)
			back := codeError(errorCode(wrapped), wrapped.Error())
			assert.ErrorIs(t, back, s.err)
			assert.EqualError(t, back, wrapped.Error())
		})
	}

	t.Run("not held after a loss", func(t *testing.T) {
		// What Lease.notHeld returns for a lease lost to the broker's Close:
		// it matches ErrNotHeld and ErrClosed, and must travel as NotHeld.
		err := fmt.Errorf("%w: %w", ErrNotHeld, errClosed)
		require.ErrorIs(t, err, ErrClosed)
		assert.Equal(t, codeNotHeld, errorCode(err))
		for _, reason := range []error{errExpired, errForced, errSessionLost, lost(ErrPreempted), ErrReleased} {
			assert.Equal(t, codeNotHeld, errorCode(fmt.Errorf("%w: %w", ErrNotHeld, reason)), "not held: %v", reason)
		}
		assert.ErrorIs(t, codeError(errorCode(err), err.Error()), ErrNotHeld)
	})

	t.Run("closed lease", func(t *testing.T) {
		assert.Equal(t, codeClosed, errorCode(errClosed), "a lease lost to Close")
	})

	t.Run("unknown", func(t *testing.T) {
		assert.Equal(t, codeProtocol, errorCode(errors.New("something else")))
		for _, code := range []uint16{0, 11, 0xffff} {
			assert.Same(t, ErrProtocol, codeError(code, ""), "code %d", code)
			assert.ErrorIs(t, codeError(code, "what"), ErrProtocol, "code %d", code)
		}
	})

	t.Run("reasons", func(t *testing.T) {
		for code, reason := range reasonErrors {
			assert.Equal(t, code, reasonCode(reason), "reason %v", reason)
		}
		assert.Len(t, reasonErrors, 6)
		for code, sentinel := range map[uint16]error{
			reasonExpired: ErrExpired, reasonPreempted: ErrPreempted, reasonSessionLost: ErrSessionLost,
			reasonForced: ErrForced, reasonClosed: ErrClosed,
		} {
			assert.ErrorIs(t, reasonErrors[code], sentinel)
			assert.ErrorIs(t, reasonErrors[code], ErrLeaseLost)
		}
		assert.NotErrorIs(t, reasonErrors[reasonReleased], ErrLeaseLost)
	})
}
