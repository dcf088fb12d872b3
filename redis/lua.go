package redis

import (
	"fmt"
	"strings"

	"github.com/lmx-go/lmx"
)

// The Lua the scripts share (see scripts.go for the keys and records).

// prologue is the Lua every script starts with: what the acquire script's
// fast path needs. ARGV[1] is the prefix, ARGV[2] the lock key, ARGV[3]
// the lock id of the caller's own request ("" for none).
var prologue = `
local P, K, self = ARGV[1], ARGV[2], ARGV[3]
local q, h, m = KEYS[1], KEYS[2], KEYS[3]
local function d(n) return string.format('%d', n) end
local t = redis.call('TIME')
t = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function event(what, id, tok)
	redis.call('PUBLISH', P .. 'e', what .. '|' .. id .. '|' .. tok .. '|' .. d(t) .. '|' .. K)
end
local function token()
	local v = redis.call('INCR', P .. 't')
	if v == 1 then
		-- A new counter (a new Redis, or one that lost its data) starts
		-- at the time in microseconds, so that tokens keep increasing.
		local tm = redis.call('TIME')
		v = tonumber(tm[1]) * 1000000 + tonumber(tm[2])
		redis.call('SET', P .. 't', d(v))
		redis.call('HSET', P .. 'n', 'g0', d(v - 1))
	end
	return d(v)
end
`

// records is the Lua, after the prologue, of every script but the acquire
// script's fast path: the records, the counters and the grant of a waiter,
// what the release script's fast path needs before lib. A grant of the
// caller's own request (self) is returned, not published.
var records = `
local function count(what)
	redis.call('HINCRBY', P .. 'n', what, 1)
end
-- observe counts ms in the histogram hist ('w' or 'h').
local function observe(hist, ms)
	local i = ` + bucketLua("ms") + `
	redis.call('HINCRBY', P .. 'n', hist .. i, 1)
	redis.call('HINCRBY', P .. 'n', hist .. 's', ms)
end
-- req reads into x the fields of a request's record r: a waiter record
-- after its id, a holder record after its first four.
local function req(x, r)
	x.rest = r
	x.sid, x.lid, x.mode, x.ttl, x.kod, x.prio, x.delay, x.grace, x.np, x.owner = string.match(r,
		'^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
	x.ttl, x.prio, x.grace = tonumber(x.ttl), tonumber(x.prio), tonumber(x.grace)
	return x
end
-- waiter reads a queue's entry r: when it queued, then its waiter record.
local function waiter(r)
	local qt, id, rest = string.match(r, '^([^|]*)|([^|]*)|(.*)$')
	return req({id = id, qt = tonumber(qt)}, rest)
end
local function holder(id, r)
	local tok, exp, since, pdl, rest = string.match(r, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
	return req({id = id, tok = tok, exp = tonumber(exp), since = since, pdl = tonumber(pdl)}, rest)
end
-- hrec is the holder record of x.
local function hrec(x)
	return x.tok .. '|' .. d(x.exp) .. '|' .. x.since .. '|' .. d(x.pdl) .. '|' .. x.rest
end
local function tell(lid, msg)
	redis.call('PUBLISH', P .. 'c:' .. lid, msg)
end
-- give writes the request w as a holder and tells its Locker, unless it is
-- the caller's own.
local function give(w)
	local tok = token()
	w.tok, w.exp, w.since, w.pdl = tok, 0, d(t), 0
	if w.ttl > 0 then w.exp = t + w.ttl end
	redis.call('HSET', h, w.id, hrec(w))
	event('a', w.id, tok)
	if w.id ~= self then tell(w.lid, 'g|' .. w.id .. '|' .. tok .. '|' .. d(w.ttl) .. '|' .. K) end
end
`

// lib is the Lua of every script but the fast paths.
var lib = `
local maxBypass = 64
-- lives has the PTTL of the sessions the script has looked at (-2: gone).
local lives = {}
local function pttl(sid)
	local ms = lives[sid]
	if ms == nil then
		ms = redis.call('PTTL', P .. 's:' .. sid)
		lives[sid] = ms
	end
	return ms
end
local function alive(sid) return pttl(sid) ~= -2 end
-- why returns why the holder x has ended, or nil while it holds.
local function why(x)
	if x.exp > 0 and x.exp <= t then return 'x' end
	if x.kod ~= '1' and not alive(x.sid) then return 's' end
	if x.pdl > 0 and x.pdl <= t then return 'p' end
	return nil
end
-- H are the live holders by id once reap has run, ex and sh how many hold
-- exclusive and shared.
local H, ex, sh = {}, 0, 0
local function add(x)
	H[x.id] = x
	if x.mode == 's' then sh = sh + 1 else ex = ex + 1 end
end
-- unhold removes the holder x from Redis.
local function unhold(x)
	redis.call('HDEL', h, x.id)
	observe('h', t - tonumber(x.since))
	if x.owner ~= '' then redis.call('HDEL', m, 'c:' .. x.id) end
end
local function drop(id)
	local x = H[id]
	if x then
		H[id] = nil
		if x.mode == 's' then sh = sh - 1 else ex = ex - 1 end
		unhold(x)
	end
	return x
end
-- delayed tells whether the key's lock-delay runs; hush starts the
-- lock-delay of the holder x, which ended without its holder asking.
local dk, dl = P .. 'd:' .. K, nil
local function delayed()
	if dl == nil then dl = redis.call('PTTL', dk) end
	return dl > 0
end
local function hush(x)
	local ms = tonumber(x.delay)
	if ms > 0 and not (delayed() and dl >= ms) then
		redis.call('SET', dk, '1', 'PX', ms)
		dl = ms
	end
end
-- reap ends the dead holders and tells their Lockers; it returns how many
-- it ended, and gone has why each one ended.
local gone = {}
local function reap()
	local all, n = redis.call('HGETALL', h), 0
	for i = 1, #all, 2 do
		local x = holder(all[i], all[i + 1])
		local w = why(x)
		if w then
			unhold(x)
			if w ~= 'p' then hush(x) end
			tell(x.lid, 'e|' .. x.id .. '|' .. w)
			count(w)
			event(w, x.id, x.tok)
			gone[x.id] = w
			n = n + 1
		else
			add(x)
		end
	end
	return n
end
-- lim is the key's limit, pre whether a waiter asked with Preempt has
-- queued since the key was last idle (nil: not read yet).
local lim, pre = nil, nil
local function limit()
	if not lim then
		local v = redis.call('HMGET', m, 'limit', 'P')
		lim, pre = tonumber(v[1] or '1'), v[2] ~= false
	end
	return lim
end
local function fits(mode)
	if mode == 's' then return ex == 0 end
	return sh == 0 and ex < limit()
end
-- hold makes the request w a holder (see give).
local function hold(w)
	give(w)
	add(w)
end
-- preempt starts a round of preemption for the queue's head w, which does
-- not fit, if it asked for one: the holders in its way, fewest and lowest
-- in priority first (among equals, the newest), get a deadline, unless one
-- of them may not be preempted. Those that have one keep it. A round that
-- starts tells w's Locker to look again, unless w is the caller's own.
local function preempt(w)
	if w.grace < 0 then return end
	local shv, exv = {}, {}
	for _, x in pairs(H) do
		if x.mode == 's' then table.insert(shv, x) else table.insert(exv, x) end
	end
	local need = exv
	if w.mode ~= 's' then
		need = shv
		local excess = #exv - limit() + 1
		if excess > 0 then
			table.sort(exv, function(a, b)
				if a.prio ~= b.prio then return a.prio < b.prio end
				return tonumber(a.tok) > tonumber(b.tok)
			end)
			for i = 1, excess do table.insert(need, exv[i]) end
		end
	end
	for _, x in ipairs(need) do
		if x.np == '1' or x.prio >= w.prio then return end
	end
	local started = false
	for _, x in ipairs(need) do
		if x.pdl == 0 then
			x.pdl = t + w.grace
			redis.call('HSET', h, x.id, hrec(x))
			tell(x.lid, 'v|' .. x.id)
			started = true
		end
	end
	if started and w.id ~= self then tell(w.lid, 'l|' .. w.id) end
end
-- unpreempt ends the round of preemption of a head that left the queue.
local function unpreempt()
	for id, x in pairs(H) do
		if x.pdl > 0 then
			x.pdl = 0
			redis.call('HSET', h, id, hrec(x))
		end
	end
end
-- grant grants the queue's head while it fits, dropping dead waiters;
-- qempty tells that it left the queue empty (nothing queues after it).
-- While the exclusive holders fill the limit nothing fits: it need not
-- look, unless a preemptor may be queued. A head that does not fit may
-- preempt the holders (see preempt).
-- A record of a request that holds, was reaped, or is the one the script
-- ends (done) is a stale copy, which a retried script may have queued: it
-- is dropped, never granted again.
-- first is the queue's head when the script has read it already.
local qempty = false
local done = {}
local first = nil
local function grant()
	while true do
		if ex > 0 and ex >= limit() then
			if pre == nil then pre = redis.call('HEXISTS', m, 'P') == 1 end
			if not pre then return end
		end
		local r = first or redis.call('LINDEX', q, 0)
		first = nil
		if not r then
			qempty = true
			return
		end
		local w = waiter(r)
		local live = alive(w.sid) and not H[w.id] and not gone[w.id] and not done[w.id]
		if live and not fits(w.mode) then
			preempt(w)
			return
		end
		if live and delayed() then return end
		redis.call('LPOP', q)
		redis.call('HDEL', m, 'b:' .. w.id, 'q:' .. w.id)
		if w.grace >= 0 then unpreempt() end
		if live then
			hold(w)
			observe('w', t - w.qt)
		end
	end
end
-- tidy forgets an idle key.
local function tidy()
	if next(H) == nil and (qempty or redis.call('EXISTS', q) == 0) then
		redis.call('DEL', m)
	end
end
-- wake returns in how many ms a holder may end on its own (its TTL or its
-- session's), -1 if none may: when a waiter looks again.
local function wake()
	local best = -1
	local function at(ms)
		if ms >= 0 and (best < 0 or ms < best) then best = ms end
	end
	for _, x in pairs(H) do
		if x.exp > 0 then at(x.exp - t) end
		if x.pdl > 0 then at(x.pdl - t) end
		if x.kod ~= '1' then at(pttl(x.sid)) end
	end
	if delayed() then at(dl) end
	return best
end
-- mine returns the reply for the caller's request, whose waiter record is
-- rec ('' if it is known not to wait; one that waits has its "q:" field):
-- {'g', token, ms left (0: no TTL)} when it holds, {'w', wake} while it
-- waits, {'n'} when it is gone.
local function mine(rec)
	local x = H[self]
	if x then
		local left = 0
		if x.exp > 0 then left = x.exp - t end
		return {'g', x.tok, left}
	end
	if rec ~= '' and redis.call('HEXISTS', m, 'q:' .. self) == 1 then return {'w', wake()} end
	return {'n'}
end
`

// bucketLua is a Lua expression of the index of the bucket of
// lmx.HistogramBounds that counts ms milliseconds, with no table made.
func bucketLua(ms string) string {
	var b strings.Builder
	bounds := lmx.HistogramBounds()
	for i, d := range bounds {
		fmt.Fprintf(&b, "%s <= %d and %d or ", ms, d.Milliseconds(), i)
	}
	fmt.Fprintf(&b, "%d", len(bounds))
	return b.String()
}
