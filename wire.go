package lmx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/oklog/ulid/v2"
)

// The wire protocol, specified in PROTOCOL.md. Every frame is a 12-byte
// header and a payload:
//
//	 0       1       2               4               8              12
//	+-------+-------+---------------+---------------+---------------+
//	|  op   | flags |  code (u16)   | request id    | payload length|
//	+-------+-------+---------------+---------------+---------------+
//	| payload (length bytes) ...
//
// Integers are big-endian in the header; in payloads they are uvarints
// (signed ones zig-zag varints), strings a uvarint length and the bytes,
// lock and session ids their 16 ULID bytes, times unix nanoseconds and
// durations nanoseconds.
const headerLen = 12

// protocolVersion is the version a Hello offers and a Welcome accepts.
const protocolVersion = 5

// magic opens every Hello, so that a stray client is told apart at once.
const magic = "LMX\x00"

type op uint8

// Ops from client to broker.
const (
	opHello   op = 0x01
	opLock    op = 0x02
	opRelease op = 0x03
	opExtend  op = 0x04
	opForce   op = 0x05
	opInspect op = 0x06
	opStats   op = 0x07
	opPing    op = 0x08
	opCancel  op = 0x09
	opWatch   op = 0x0a
	opList    op = 0x0b
	opStopped op = 0x0c
)

// Ops from broker to client.
const (
	opWelcome op = 0x81
	opGranted op = 0x82
	opOK      op = 0x83
	opError   op = 0x84
	opEnded   op = 0x85
	opInfo    op = 0x86
	opStatsOK op = 0x87
	opPong    op = 0x88
	opEvent   op = 0x89
	opRevoke  op = 0x8a
	opKeys    op = 0x8b
	opNext    op = 0x8c
	opStop    op = 0x8d
)

// Lock flags.
const (
	flagWait             = 1 << 0
	flagShared           = 1 << 1
	flagKeepOnDisconnect = 1 << 2
	flagNoPreempt        = 1 << 3
	flagPreempt          = 1 << 4 // a duration grace follows the owner
	flagLockDelay        = 1 << 5 // a duration lock-delay follows
	flagKeepAlive        = 1 << 6 // a duration KeepAlive bound follows
)

// header is a decoded frame header.
type header struct {
	op     op
	flags  uint8
	code   uint16
	id     uint32
	length uint32
}

func parseHeader(b []byte) header {
	return header{
		op:     op(b[0]),
		flags:  b[1],
		code:   binary.BigEndian.Uint16(b[2:]),
		id:     binary.BigEndian.Uint32(b[4:]),
		length: binary.BigEndian.Uint32(b[8:]),
	}
}

// frame appends a frame to b: its header, then whatever body appends, with
// the length filled in afterwards.
func frame(b []byte, o op, flags uint8, code uint16, id uint32, body func([]byte) []byte) []byte {
	start := len(b)
	b = append(b, byte(o), flags, byte(code>>8), byte(code), 0, 0, 0, 0, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[start+4:], id)
	if body != nil {
		b = body(b)
	}
	binary.BigEndian.PutUint32(b[start+8:], uint32(len(b)-start-headerLen))
	return b
}

// errMalformed is what a decoder returns for a payload that does not parse.
var errMalformed = errors.New("malformed payload")

// decoder reads payload fields; the first failure sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errMalformed
	}
	d.b = nil
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

// bytes returns the next length-prefixed field, aliasing the payload.
func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail()
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string { return string(d.bytes()) }

func (d *decoder) ulid() (id ulid.ULID) {
	if len(d.b) < len(id) {
		d.fail()
		return id
	}
	copy(id[:], d.b)
	d.b = d.b[len(id):]
	return id
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail()
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

// duration reads nanoseconds, refusing values past time.Duration's range.
func (d *decoder) duration() time.Duration {
	v := d.uvarint()
	if v > 1<<63-1 {
		d.fail()
		return 0
	}
	return time.Duration(v)
}

// time reads unix nanoseconds; 0 is the zero time.
func (d *decoder) time() time.Time {
	v := d.varint()
	if v == 0 {
		return time.Time{}
	}
	return time.Unix(0, v)
}

// done reports the first failure, or trailing bytes.
func (d *decoder) done() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d trailing bytes", len(d.b))
	}
	return d.err
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return binary.AppendVarint(b, 0)
	}
	return binary.AppendVarint(b, t.UnixNano())
}

// lockMsg is the payload of a Lock frame.
type lockMsg struct {
	key   string
	flags uint8
	req   request
}

func appendLock(b []byte, key string, r *request) []byte {
	b = appendString(b, key)
	b = binary.AppendUvarint(b, uint64(r.ttl))
	b = binary.AppendUvarint(b, uint64(r.limit))
	b = binary.AppendVarint(b, int64(r.priority))
	b = appendString(b, r.owner)
	if r.preempt >= 0 {
		b = binary.AppendUvarint(b, uint64(r.preempt))
	}
	if r.lockDelay >= 0 {
		b = binary.AppendUvarint(b, uint64(r.lockDelay))
	}
	if r.keepAlive > 0 {
		b = binary.AppendUvarint(b, uint64(r.keepAlive))
	}
	return b
}

func lockFlags(r *request, wait bool) uint8 {
	var f uint8
	if wait {
		f |= flagWait
	}
	if r.shared {
		f |= flagShared
	}
	if r.keepOnDisconnect {
		f |= flagKeepOnDisconnect
	}
	if r.noPreempt {
		f |= flagNoPreempt
	}
	if r.preempt >= 0 {
		f |= flagPreempt
	}
	if r.lockDelay >= 0 {
		f |= flagLockDelay
	}
	if r.keepAlive > 0 {
		f |= flagKeepAlive
	}
	return f
}

func decodeLock(h header, p []byte) (lockMsg, error) {
	d := decoder{b: p}
	m := lockMsg{key: d.string(), flags: h.flags}
	m.req.ttl = d.duration()
	limit := d.uvarint()
	m.req.priority = int(d.varint())
	m.req.owner = d.string()
	m.req.preempt, m.req.lockDelay = -1, -1
	if h.flags&flagPreempt != 0 {
		m.req.preempt = d.duration()
	}
	if h.flags&flagLockDelay != 0 {
		m.req.lockDelay = d.duration()
	}
	if h.flags&flagKeepAlive != 0 {
		if m.req.keepAlive = d.duration(); m.req.keepAlive == 0 {
			d.fail() // the flag says there is a bound
		}
	}
	if err := d.done(); err != nil {
		return m, err
	}
	if limit > maxLimit {
		limit = 0 // refused by validation below
	}
	m.req.limit = int(limit)
	m.req.shared = h.flags&flagShared != 0
	m.req.keepOnDisconnect = h.flags&flagKeepOnDisconnect != 0
	m.req.noPreempt = h.flags&flagNoPreempt != 0
	return m, nil
}

// Error codes carried in the code field of Error frames. They are stable:
// each maps back to one sentinel error.
const (
	codeLocked        uint16 = 1
	codeNotHeld       uint16 = 2
	codeLimitMismatch uint16 = 3
	codeInvalidKey    uint16 = 4
	codeInvalidOption uint16 = 5
	codeClosed        uint16 = 6
	codeCanceled      uint16 = 7
	codeProtocol      uint16 = 8
	codeAuth          uint16 = 9
	codeBusy          uint16 = 10
)

// Reasons carried in the code field of Ended frames.
const (
	reasonReleased    uint16 = 1
	reasonExpired     uint16 = 2
	reasonPreempted   uint16 = 3
	reasonSessionLost uint16 = 4
	reasonForced      uint16 = 5
	reasonClosed      uint16 = 6
)

// codeErrors pairs codes and sentinels, most specific first: an error that
// wraps two sentinels (ErrNotHeld wrapping ErrClosed) takes the first.
var codeErrors = []struct {
	code uint16
	err  error
}{
	{codeNotHeld, ErrNotHeld},
	{codeLocked, ErrLocked},
	{codeLimitMismatch, ErrLimitMismatch},
	{codeInvalidKey, ErrInvalidKey},
	{codeInvalidOption, ErrInvalidOption},
	{codeAuth, ErrAuth},
	{codeBusy, ErrBusy},
	{codeClosed, ErrClosed},
	{codeProtocol, ErrProtocol},
}

// errorCode returns the wire code of err.
func errorCode(err error) uint16 {
	for _, c := range codeErrors {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return codeProtocol
}

// codeError turns an Error frame back into an error matching its sentinel,
// keeping the broker's message.
func codeError(code uint16, msg string) error {
	sentinel := ErrProtocol
	for _, c := range codeErrors {
		if c.code == code {
			sentinel = c.err
		}
	}
	if msg == "" || msg == sentinel.Error() {
		return sentinel
	}
	return &remoteError{sentinel: sentinel, msg: msg}
}

// remoteError is an error from the broker: its message, matching the
// sentinel of its code.
type remoteError struct {
	sentinel error
	msg      string
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

var reasonErrors = map[uint16]error{
	reasonReleased:    ErrReleased,
	reasonExpired:     errExpired,
	reasonPreempted:   errPreempted,
	reasonSessionLost: errSessionLost,
	reasonForced:      errForced,
	reasonClosed:      errClosed,
}

// reasonCode returns the wire reason of a lease's end.
func reasonCode(reason error) uint16 {
	switch {
	case errors.Is(reason, ErrReleased):
		return reasonReleased
	case errors.Is(reason, ErrExpired):
		return reasonExpired
	case errors.Is(reason, ErrPreempted):
		return reasonPreempted
	case errors.Is(reason, ErrForced):
		return reasonForced
	case errors.Is(reason, ErrClosed):
		return reasonClosed
	}
	return reasonSessionLost
}

func appendKeyInfo(b []byte, ki *KeyInfo) []byte {
	b = binary.AppendUvarint(b, uint64(ki.Limit))
	holders, waiters := ki.Holders, ki.Waiters
	holders = holders[:min(len(holders), maxListed)]
	waiters = waiters[:min(len(waiters), maxListed)]
	b = binary.AppendUvarint(b, uint64(len(holders)))
	for _, h := range holders {
		b = append(b, h.ID[:]...)
		b = binary.AppendUvarint(b, h.Token)
		b = appendString(b, h.Owner)
		b = append(b, boolByte(h.Shared))
		b = binary.AppendUvarint(b, uint64(h.Count))
		b = appendTime(b, h.Expires)
		b = appendTime(b, h.Since)
	}
	b = binary.AppendUvarint(b, uint64(len(waiters)))
	for _, w := range waiters {
		b = appendString(b, w.Owner)
		b = binary.AppendVarint(b, int64(w.Priority))
		b = append(b, boolByte(w.Shared))
	}
	return b
}

// maxListed bounds the holders and the waiters an Info frame lists, so that
// it stays far below the frame limit.
const maxListed = 4096

func decodeKeyInfo(key string, p []byte) (KeyInfo, error) {
	d := decoder{b: p}
	ki := KeyInfo{Key: key, Limit: int(d.uvarint())}
	for n := d.uvarint(); n > 0 && d.err == nil; n-- {
		var h HolderInfo
		h.ID = d.ulid()
		h.Token = d.uvarint()
		h.Owner = d.string()
		h.Shared = d.byte() != 0
		h.Count = int(d.uvarint())
		h.Expires = d.time()
		h.Since = d.time()
		ki.Holders = append(ki.Holders, h)
	}
	for n := d.uvarint(); n > 0 && d.err == nil; n-- {
		var w WaiterInfo
		w.Owner = d.string()
		w.Priority = int(d.varint())
		w.Shared = d.byte() != 0
		ki.Waiters = append(ki.Waiters, w)
	}
	return ki, d.done()
}

// appendEvent encodes an Event frame's payload; its type is the frame's code.
func appendEvent(b []byte, ev *Event) []byte {
	b = appendString(b, ev.Key)
	b = append(b, ev.ID[:]...)
	b = binary.AppendUvarint(b, ev.Token)
	b = appendString(b, ev.Owner)
	b = appendTime(b, ev.Time)
	return binary.AppendUvarint(b, ev.Missed)
}

func decodeEvent(code uint16, p []byte) (Event, error) {
	d := decoder{b: p}
	ev := Event{Type: EventType(code), Key: d.string(), ID: d.ulid(), Token: d.uvarint(), Owner: d.string(), Time: d.time(), Missed: d.uvarint()}
	if ev.Type == 0 || ev.Type > EventLagged {
		d.fail()
	}
	return ev, d.done()
}

func appendKeyStats(b []byte, keys []KeyStat) []byte {
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		b = appendString(b, k.Key)
		b = binary.AppendUvarint(b, uint64(k.Limit))
		b = binary.AppendUvarint(b, uint64(k.Holders))
		b = binary.AppendUvarint(b, uint64(k.Waiters))
	}
	return b
}

func decodeKeyStats(p []byte) ([]KeyStat, error) {
	d := decoder{b: p}
	n := d.uvarint()
	if n > MaxListLimit {
		d.fail()
	}
	var keys []KeyStat
	for ; n > 0 && d.err == nil; n-- {
		keys = append(keys, KeyStat{Key: d.string(), Limit: int(d.uvarint()), Holders: int(d.uvarint()), Waiters: int(d.uvarint())})
	}
	return keys, d.done()
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

func appendStats(b []byte, s *Stats) []byte {
	for _, v := range []uint64{uint64(s.Keys), uint64(s.Holders), uint64(s.Waiters), uint64(s.Sessions),
		s.Grants, s.Expiries, s.Forced, s.Preemptions, s.SessionLost} {
		b = binary.AppendUvarint(b, v)
	}
	for _, h := range []*Histogram{&s.WaitTime, &s.HoldTime} {
		for _, c := range h.Counts {
			b = binary.AppendUvarint(b, c)
		}
		b = binary.AppendUvarint(b, uint64(h.Sum))
	}
	return b
}

func decodeStats(p []byte) (Stats, error) {
	d := decoder{b: p}
	s := Stats{
		Keys: int(d.uvarint()), Holders: int(d.uvarint()), Waiters: int(d.uvarint()), Sessions: int(d.uvarint()),
		Grants: d.uvarint(), Expiries: d.uvarint(), Forced: d.uvarint(), Preemptions: d.uvarint(), SessionLost: d.uvarint(),
	}
	for _, h := range []*Histogram{&s.WaitTime, &s.HoldTime} {
		for i := range h.Counts {
			h.Counts[i] = d.uvarint()
		}
		h.Sum = d.duration()
	}
	return s, d.done()
}
