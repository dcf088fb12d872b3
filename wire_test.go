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

// fuzzSeeds returns a valid payload of every op that has one, a few
// malformed payloads, and a few whole frame streams for the session.
func fuzzSeeds() [][]byte {
	id := ulid.MustParse("01HZY3M6Z0K9V3T8W2Q5R7S4XA")
	exp := time.Unix(1_700_000_000, 123456789)
	key := "orders/42"
	lockReq := request{ttl: 30 * time.Second, limit: 3, priority: -7, owner: "worker-1"}

	lock := appendLock(nil, key, &lockReq)
	release := append(appendString(nil, key), id[:]...)
	extend := binary.AppendUvarint(append(appendString(nil, key), id[:]...), uint64(time.Minute))
	info := appendKeyInfo(nil, &KeyInfo{
		Limit: 2,
		Holders: []HolderInfo{
			{ID: id, Token: 99, Owner: "a", Shared: true, Count: 2, Expires: exp},
			{ID: id, Token: 100, Owner: "", Shared: false, Count: 1},
		},
		Waiters: []WaiterInfo{{Owner: "w", Priority: -3, Shared: true}, {Priority: 5}},
	})
	stats := appendStats(nil, &Stats{Keys: 1, Holders: 2, Waiters: 3, Sessions: 4, Grants: 5, Expiries: 6, Forced: 7, Preemptions: 8, SessionLost: 1 << 40})
	granted := appendTime(binary.AppendUvarint(append([]byte(nil), id[:]...), 12345), exp)
	ended := append(appendString(nil, key), id[:]...)
	hello := appendString(append(appendString(nil, magic), protocolVersion), "s3cret")
	keyOnly := appendString(nil, key)

	// Whole frames, as a session reads them after the handshake.
	var stream []byte
	stream = frame(stream, opLock, flagWait, 0, 1, func(b []byte) []byte { return appendLock(b, "k", &request{limit: 1}) })
	stream = frame(stream, opLock, flagWait, 0, 2, func(b []byte) []byte { return appendLock(b, "k", &request{limit: 1}) })
	stream = frame(stream, opInspect, 0, 0, 3, func(b []byte) []byte { return appendString(b, "k") })
	stream = frame(stream, opCancel, 0, 0, 2, nil)
	stream = frame(stream, opStats, 0, 0, 4, nil)
	stream = frame(stream, opRelease, 0, 0, 5, func(b []byte) []byte { return append(appendString(b, "k"), id[:]...) })
	stream = frame(stream, opExtend, 0, 0, 6, func(b []byte) []byte {
		return binary.AppendUvarint(append(appendString(b, "k"), id[:]...), uint64(time.Second))
	})
	stream = frame(stream, opForce, 0, 0, 7, func(b []byte) []byte { return appendString(b, "k") })
	stream = frame(stream, opPing, 0, 0, 8, nil)
	shared := frame(nil, opLock, flagShared|flagKeepOnDisconnect, 0, 9, func(b []byte) []byte {
		return appendLock(b, "s", &request{ttl: time.Hour, limit: 2, shared: true, keepOnDisconnect: true})
	})
	unknown := frame(nil, 0x7f, 0, 0, 10, func(b []byte) []byte { return append(b, "junk"...) })
	oversized := frame(nil, opLock, 0, 0, 11, nil)
	binary.BigEndian.PutUint32(oversized[8:], 1<<20)
	againHello := frame(nil, opHello, 0, 0, 12, func(b []byte) []byte { return append(b, hello...) })

	return [][]byte{
		lock, release, extend, info, stats, granted, ended, hello, keyOnly,
		// Malformed: empty, truncated, trailing bytes, a string longer than
		// the payload, an overlong varint, a huge count.
		{},
		lock[:len(lock)-1],
		append(append([]byte(nil), release...), 0),
		{0xff, 0xff, 0xff, 0xff, 0x0f, 'k'},
		bytes.Repeat([]byte{0xff}, 11),
		{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		[]byte("GET / HTTP/1.1\r\n\r\n"),
		// Frame streams.
		stream, shared, unknown, oversized, againHello,
		append(append([]byte(nil), stream...), shared[:7]...),  // ends inside a header
		append(append([]byte(nil), shared...), stream[:20]...), // ends inside a payload
	}
}

// checkDecoders runs every decoder on data. What decodes must re-encode and
// decode to the same value, must fail if cut short by a byte, and must fail
// with a byte more.
func checkDecoders(t *testing.T, data []byte, flags uint8) {
	h := header{op: opLock, flags: flags, id: 1, length: uint32(len(data))}
	if m, err := decodeLock(h, data); err == nil {
		again, err := decodeLock(h, appendLock(nil, m.key, &m.req))
		require.NoError(t, err, "lock: re-encoded %+v", m)
		require.Equal(t, m, again, "lock round trip")
		requireStrict(t, "lock", data, func(p []byte) error { _, err := decodeLock(h, p); return err })
	}

	if ki, err := decodeKeyInfo("k", data); err == nil {
		want := ki
		// The encoder lists at most maxListed of each, by design.
		want.Holders = want.Holders[:min(len(want.Holders), maxListed)]
		want.Waiters = want.Waiters[:min(len(want.Waiters), maxListed)]
		again, err := decodeKeyInfo("k", appendKeyInfo(nil, &ki))
		require.NoError(t, err, "keyinfo: re-encoded %+v", ki)
		require.Equal(t, want, again, "keyinfo round trip")
		requireStrict(t, "keyinfo", data, func(p []byte) error { _, err := decodeKeyInfo("k", p); return err })
	}

	if st, err := decodeStats(data); err == nil {
		again, err := decodeStats(appendStats(nil, &st))
		require.NoError(t, err, "stats: re-encoded %+v", st)
		require.Equal(t, st, again, "stats round trip")
		requireStrict(t, "stats", data, func(p []byte) error { _, err := decodeStats(p); return err })
	}

	// The field sequences the session and the client decode inline, each
	// re-encoded the way its sender encodes it.
	for _, fs := range fieldSeqs {
		d := decoder{b: data}
		v := fs.decode(&d)
		if d.done() != nil {
			continue
		}
		d = decoder{b: fs.encode(nil, v)}
		again := fs.decode(&d)
		require.NoError(t, d.done(), "%s: re-encoded %+v", fs.name, v)
		require.Equal(t, v, again, "%s round trip", fs.name)
		requireStrict(t, fs.name, data, func(p []byte) error { d := decoder{b: p}; fs.decode(&d); return d.done() })
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

// A fieldSeq is a payload decoded inline, with the encoding its sender uses.
type fieldSeq struct {
	name   string
	decode func(*decoder) any
	encode func([]byte, any) []byte
}

type (
	releaseMsg struct {
		key string
		id  ulid.ULID
	}
	extendMsg struct {
		key string
		id  ulid.ULID
		ttl time.Duration
	}
	grantedMsg struct {
		id    ulid.ULID
		token uint64
		exp   time.Time
	}
	helloMsg struct {
		magic   string
		version byte
		token   string
	}
	welcomeMsg struct {
		version             byte
		session             ulid.ULID
		heartbeat, timeout  time.Duration
		maxFrame, maxKeyLen uint64
	}
)

var fieldSeqs = []fieldSeq{
	{ // Release, and Ended, whose fields are the same (session.handle, clientConn.dispatch)
		name:   "release",
		decode: func(d *decoder) any { return releaseMsg{d.string(), d.ulid()} },
		encode: func(b []byte, v any) []byte { m := v.(releaseMsg); return append(appendString(b, m.key), m.id[:]...) },
	},
	{ // Extend (session.handle, clientConn.extend)
		name:   "extend",
		decode: func(d *decoder) any { return extendMsg{d.string(), d.ulid(), d.duration()} },
		encode: func(b []byte, v any) []byte {
			m := v.(extendMsg)
			return binary.AppendUvarint(append(appendString(b, m.key), m.id[:]...), uint64(m.ttl))
		},
	},
	{ // Granted (session.granted, clientConn.granted)
		name:   "granted",
		decode: func(d *decoder) any { return grantedMsg{d.ulid(), d.uvarint(), d.time()} },
		encode: func(b []byte, v any) []byte {
			m := v.(grantedMsg)
			return appendTime(binary.AppendUvarint(append(b, m.id[:]...), m.token), m.exp)
		},
	},
	{ // Ended (session.ended, clientConn.dispatch)
		name:   "ended",
		decode: func(d *decoder) any { return releaseMsg{d.string(), d.ulid()} },
		encode: func(b []byte, v any) []byte { m := v.(releaseMsg); return append(appendString(b, m.key), m.id[:]...) },
	},
	{ // the OK answering an Extend
		name:   "extended",
		decode: func(d *decoder) any { return d.time() },
		encode: func(b []byte, v any) []byte { return appendTime(b, v.(time.Time)) },
	},
	{ // Hello (Client.handshake, session.handshake)
		name:   "hello",
		decode: func(d *decoder) any { return helloMsg{string(d.bytes()), d.byte(), string(d.bytes())} },
		encode: func(b []byte, v any) []byte {
			m := v.(helloMsg)
			return appendString(append(appendString(b, m.magic), m.version), m.token)
		},
	},
	{ // Welcome (session.handshake, Client.handshake)
		name: "welcome",
		decode: func(d *decoder) any {
			return welcomeMsg{d.byte(), d.ulid(), d.duration(), d.duration(), d.uvarint(), d.uvarint()}
		},
		encode: func(b []byte, v any) []byte {
			m := v.(welcomeMsg)
			b = append(append(b, m.version), m.session[:]...)
			b = binary.AppendUvarint(b, uint64(m.heartbeat))
			b = binary.AppendUvarint(b, uint64(m.timeout))
			b = binary.AppendUvarint(b, m.maxFrame)
			return binary.AppendUvarint(b, m.maxKeyLen)
		},
	},
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
	hello := frame(nil, opHello, 0, 0, 0, func(b []byte) []byte {
		b = appendString(b, magic)
		b = append(b, protocolVersion)
		return appendString(b, "")
	})
	_, err := nc.Write(hello)
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
	nc.Write(frame(nil, opPing, 0, 0, fuzzPingID, nil))

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

	// A new connection is served, whatever became of this one.
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

	nc.Close()
	<-done
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
			d := decoder{b: f.payload}
			desc += fmt.Sprintf(" %q", d.string())
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
		payload []byte // nil: no body func
	}{
		{name: "ping", op: opPing, id: 1},
		{name: "zero id and empty body", op: opStats, payload: []byte{}},
		{name: "lock with flags", op: opLock, flags: flagWait | flagShared | flagKeepOnDisconnect, id: 7, payload: []byte("\x01k\x00\x01\x00\x00")},
		{name: "error with code", op: opError, code: codeBusy, id: 0xdeadbeef, payload: []byte("\x04busy")},
		{name: "all ones", op: 0xff, flags: 0xff, code: 0xffff, id: 0xffffffff, payload: []byte{0xff}},
		{name: "code high byte", op: opEnded, code: 0x0102, id: 0x01020304, payload: bytes.Repeat([]byte{0xab}, 300)},
		{name: "after another frame", prefix: frame(nil, opPong, 0, 0, 3, nil), op: opOK, id: 4, payload: []byte("ok")},
		{name: "large payload", prefix: []byte("xyz"), op: opInfo, id: 1 << 31, payload: bytes.Repeat([]byte{1, 2, 3}, 70000)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body func([]byte) []byte
			if tt.payload != nil {
				body = func(b []byte) []byte { return append(b, tt.payload...) }
			}
			prefix := append([]byte(nil), tt.prefix...)
			b := frame(prefix, tt.op, tt.flags, tt.code, tt.id, body)
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
