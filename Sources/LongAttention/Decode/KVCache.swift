import AttentionTensor
import CAttentionKernels

/// Keys and values of past tokens for decoding, per layer: `[B, Hkv, slots, d]` keys and
/// `[B, Hkv, slots, dv]` values, allocated once up front (`B` batch, `Hkv` KV heads, `d`/`dv` the
/// key/value head dimensions).
///
/// A full layer has `slots = capacity`: position `p` is row `p`. A **sliding-window layer** (a
/// window `W` in `windows`, as Mistral's or Gemma 2/3's local layers) keeps only its recent
/// positions in a ring buffer of
///
///     slots = min(capacity, W + maxAppend - 1)
///
/// rows, position `p` at row `p mod slots`. The rule: an append of `n <= maxAppend` tokens followed
/// by attention of those `n` queries needs, for the first of them (position `L - n` after the
/// append, `L` the new length), the keys `L - n - W + 1 ... L - 1`, i.e. the last `n + W - 1`
/// positions: `W + maxAppend - 1` slots always hold them. Token-by-token decoding (`maxAppend = 1`)
/// thus keeps exactly `W` positions per windowed layer. Gemma 3 (5 of 6 layers local, W = 1024) at
/// 32K positions needs 19% of a full cache's bytes; at W = 512, 18%.
///
/// Appends to a windowed layer are limited to `maxAppend` tokens at once
/// (``AttentionError/appendTooLong(maxAppend:appending:)``); a long prompt is either appended in
/// chunks of at most `maxAppend` tokens (``append(layer:keys:values:)`` per chunk, each followed by
/// its attention), or the cache is made with `maxAppend` = the prompt length (a ring that large
/// costs what its slots cost, at most `capacity`).
///
/// Appending writes the new tokens' rows in place; ``keys(layer:)`` and ``values(layer:)`` are the
/// positions still held, in position order (``positions(layer:)``): a view of a float32 full layer
/// (`[B, Hkv, length, d]`, strides over the full capacity), which attention reads without copying.
/// Capacity (positions, for every layer) is fixed: appending past it throws
/// ``AttentionError/cacheFull(capacity:length:appending:)`` (no silent growth: reallocating a
/// multi-GiB cache mid-generation is a decision for the caller, who can make a larger cache and
/// ``copy(from:)`` into it).
///
/// `KVCache` is a value: a view kept across an append keeps the contents it had (the append then
/// copies the layer); views used within one step, as in a decode loop, cost nothing.
///
/// The storage ``type`` may be lower precision than float32 (``KVCacheType``): bf16, f16 or int8
/// (ggml's q8_0), for full and windowed layers alike. Appends convert;
/// ``decodeAttention(queries:cache:layer:scale:alibi:slidingWindow:outputLayout:threads:)`` reads
/// the stored rows directly (a ring as its two contiguous segments); ``keys(layer:)`` and
/// ``values(layer:)`` of such a cache are dequantised copies, for inspection.
public struct KVCache: Sendable {
    public let layers: Int, batch: Int, kvHeads: Int, capacity: Int, headDimension: Int, valueDimension: Int
    /// How keys and values are stored.
    public let type: KVCacheType
    /// Per layer, the sliding window `W` its ring serves, or nil for a full layer.
    public let windows: [Int?]
    /// Per layer, the attention sinks it keeps besides its ring (StreamingLLM, Xiao et al. 2023):
    /// the keys and values of positions `0 ..< sinks[layer]` are copied, in float32, into a store of
    /// their own when appended, so a windowed layer holds `S + slots` positions however long the
    /// sequence grows. 0 for every layer unless given; only windowed layers take sinks.
    public let sinks: [Int]
    var sinkKeyStore: [Tensor], sinkValueStore: [Tensor]
    /// The most tokens one append may add to a windowed layer (full layers take any number up to the capacity).
    public let maxAppend: Int
    /// Rows stored per layer and (batch, KV head): `capacity` for a full layer, `min(capacity, W + maxAppend - 1)`
    /// for a windowed one.
    public let slots: [Int]
    /// Positions appended per layer (for a windowed layer, more than it holds once its ring wraps).
    public private(set) var lengths: [Int]
    /// Per layer, the oldest position whose rows were written (0, unless ``copy(from:)`` took only
    /// a source ring's last positions): held positions never reach below it.
    var heldFrom: [Int]
    var keyStore: [Tensor], valueStore: [Tensor]
    /// Largest |key| and |value| appended per layer (measured by the NaN/Inf scan at append time):
    /// what decoding's overflow bound needs without scanning the cache again. For a ring, a bound
    /// over every position ever appended (positions that left the ring are not forgotten).
    var maxKey: [Float], maxValue: [Float]

    /// A cache for `layers` layers of `batch` sequences with `kvHeads` KV heads and `capacity` positions.
    ///
    /// - Parameters:
    ///   - windows: per layer, nil (a full layer of `capacity` rows) or a sliding window `W >= 1`
    ///     (a ring of `min(capacity, W + maxAppend - 1)` rows). nil: every layer full.
    ///   - maxAppend: the longest append a windowed layer takes (default 1: token-by-token
    ///     decoding); it sizes the rings. Ignored by full layers.
    /// - Throws: ``AttentionError/invalidArgument(name:value:expected:)`` for sizes below 1 or a `windows` count
    ///   other than `layers`; ``AttentionError/invalidWindow(window:layer:reason:)`` for a window below 1;
    ///   ``AttentionError/tooLarge(buffer:bytes:limit:)`` when the bytes overflow or exceed the memory budget.
    public init(layers: Int, batch: Int, kvHeads: Int, capacity: Int, headDimension d: Int, valueDimension dv: Int? = nil,
                type: KVCacheType = .float32, windows: [Int?]? = nil, maxAppend: Int = 1, sinks: [Int]? = nil) throws {
        let dv = dv ?? d
        guard layers >= 1, batch >= 1, kvHeads >= 1, capacity >= 1, d >= 1, dv >= 1 else {
            throw AttentionError.invalidArgument(name: "KV cache sizes [layers, B, Hkv, capacity, d, dv]", value: "\([layers, batch, kvHeads, capacity, d, dv])", expected: "all positive")
        }
        let slots = try Self.slots(layers: layers, capacity: capacity, windows: windows, maxAppend: maxAppend)
        let sinks = sinks ?? Array(repeating: 0, count: layers)
        guard sinks.count == layers, sinks.allSatisfy({ $0 >= 0 && $0 <= capacity }) else {
            throw AttentionError.invalidArgument(name: "sinks", value: "\(sinks)", expected: "\(layers) counts in 0...\(capacity)")
        }
        for (layer, s) in sinks.enumerated() where s > 0 && (windows?[layer] ?? nil) == nil {
            throw AttentionError.invalidArgument(name: "sinks[\(layer)]", value: "\(s)", expected: "0: layer \(layer) is a full layer, only windowed layers take attention sinks")
        }
        self.sinks = sinks
        self.layers = layers
        self.batch = batch
        self.kvHeads = kvHeads
        self.capacity = capacity
        headDimension = d
        valueDimension = dv
        self.windows = windows ?? Array(repeating: nil, count: layers)
        self.maxAppend = maxAppend
        self.slots = slots
        lengths = Array(repeating: 0, count: layers)
        heldFrom = Array(repeating: 0, count: layers)
        maxKey = Array(repeating: 0, count: layers)
        maxValue = Array(repeating: 0, count: layers)
        // Uninitialised: pages are only touched as tokens are appended. Huge pages: every decode
        // step streams the whole filled cache, and with 4 KiB pages that is a TLB miss per 8 keys
        // (d = 128); measured at 128K keys, Hkv = 8: 42–43 ms per step against 46–53 without.
        self.type = type
        // The whole cache's size, checked before anything is allocated.
        guard let total = Self.bytes(batch: batch, kvHeads: kvHeads, slots: slots, headDimension: d, valueDimension: dv, type: type) else {
            throw AttentionError.tooLarge(buffer: "a KV cache of \(layers) layers × B \(batch) × Hkv \(kvHeads) × \(capacity) positions × d \(d)/\(dv)", bytes: nil, limit: nil)
        }
        do { try MemoryBudget.check(total) } catch {
            throw AttentionError.tooLarge(buffer: "a \(type) KV cache", bytes: total, limit: MemoryBudget.availableBytes)
        }
        // Float32 caches are tensors `[B, Hkv, slots, d]` (views read them in place); the other
        // types are rows of bytes (`type.rowBytes(d)` each) in a flat float buffer used as storage.
        // (Every product here is bounded by `total`, checked above.)
        func store(_ width: Int, _ rows: Int) throws -> Tensor {
            if type == .float32 { return try Tensor(uninitialized: [batch, kvHeads, rows, width], hugePages: true) }
            return try Tensor(uninitialized: [(batch * kvHeads * rows * type.rowBytes(width) + 3) / 4], hugePages: true)
        }
        keyStore = try slots.map { try store(d, $0) }
        valueStore = try slots.map { try store(dv, $0) }
        sinkKeyStore = try sinks.map { try Tensor(zeros: [batch, kvHeads, $0, d]) }
        sinkValueStore = try sinks.map { try Tensor(zeros: [batch, kvHeads, $0, dv]) }
    }

    /// The attention sinks `layer` holds: keys `[B, Hkv, s, d]` and values `[B, Hkv, s, dv]` of
    /// positions `0 ..< s`, `s = min(sinks[layer], lengths[layer])` (float32 whatever ``type`` is;
    /// views of the sink store).
    public func sinkRows(layer: Int) throws -> (keys: Tensor, values: Tensor) {
        guard (0..<layers).contains(layer) else { throw AttentionError.invalidArgument(name: "layer", value: "\(layer)", expected: "0..<\(layers)") }
        let s = min(sinks[layer], lengths[layer])
        return (try sinkKeyStore[layer].rows(0..<s), try sinkValueStore[layer].rows(0..<s))
    }

    /// The rows each layer stores (see the type's description), after checking `windows` and `maxAppend`.
    static func slots(layers: Int, capacity: Int, windows: [Int?]?, maxAppend: Int) throws -> [Int] {
        guard maxAppend >= 1 else { throw AttentionError.invalidArgument(name: "maxAppend", value: "\(maxAppend)", expected: "at least 1") }
        guard let windows else { return Array(repeating: capacity, count: layers) }
        guard windows.count == layers else {
            throw AttentionError.invalidArgument(name: "windows", value: "\(windows.count) windows", expected: "one per layer (\(layers))")
        }
        return try windows.map { w in
            guard let w else { return capacity }
            guard w >= 1 else { throw AttentionError.invalidWindow(window: w, layer: nil, reason: "a KV cache layer's window must be at least 1 position") }
            let (sum, overflow) = w.addingReportingOverflow(maxAppend - 1)
            return overflow ? capacity : min(capacity, sum)
        }
    }

    /// Bytes of a cache: `layers · B · Hkv · capacity · (rowBytes(d) + rowBytes(dv))`, with
    /// `rowBytes(d)` = 4d (f32), 2d (bf16, f16) or 34·ceil(d/32) (int8); a windowed layer counts
    /// its `min(capacity, W + maxAppend - 1)` slots instead of `capacity`. nil when that overflows
    /// or the windows are invalid (a count other than `layers`, `W < 1`, `maxAppend < 1`).
    public static func bytes(layers: Int, batch: Int, kvHeads: Int, capacity: Int, headDimension d: Int, valueDimension dv: Int? = nil,
                             type: KVCacheType = .float32, windows: [Int?]? = nil, maxAppend: Int = 1) -> Int? {
        guard layers >= 0, let slots = try? Self.slots(layers: layers, capacity: capacity, windows: windows, maxAppend: maxAppend) else {
            return nil
        }
        return bytes(batch: batch, kvHeads: kvHeads, slots: slots, headDimension: d, valueDimension: dv ?? d, type: type)
    }

    /// `Σ_layers B · Hkv · slots · (rowBytes(d) + rowBytes(dv))`, nil on overflow.
    static func bytes(batch: Int, kvHeads: Int, slots: [Int], headDimension d: Int, valueDimension dv: Int, type: KVCacheType) -> Int? {
        guard d <= Int.max / 64, dv <= Int.max / 64 else { return nil }
        let row = type.rowBytes(d) + type.rowBytes(dv)
        var total = 0
        for s in slots {
            var n = row
            for f in [batch, kvHeads, s] {
                let (p, o) = n.multipliedReportingOverflow(by: f)
                if o { return nil }
                n = p
            }
            let (t, o) = total.addingReportingOverflow(n)
            if o { return nil }
            total = t
        }
        return total
    }

    /// Bytes this cache holds (windowed layers count their ring's slots only; attention sinks their float32 rows).
    public var bytes: Int {
        Self.bytes(batch: batch, kvHeads: kvHeads, slots: slots, headDimension: headDimension, valueDimension: valueDimension, type: type)!
            + sinks.reduce(0, +) * batch * kvHeads * (headDimension + valueDimension) * 4
    }

    /// Bytes of one layer's keys and values (`layer` in `0 ..< layers`, as for ``lengths``).
    public func bytes(layer: Int) -> Int {
        batch * kvHeads * slots[layer] * (type.rowBytes(headDimension) + type.rowBytes(valueDimension))
    }

    /// The positions `layer` still holds: `0 ..< length` for a full layer, the last
    /// `min(length, slots)` for a windowed one (`layer` in `0 ..< layers`, as for ``lengths``).
    public func positions(layer: Int) -> Range<Int> {
        let n = lengths[layer]
        return max(heldFrom[layer], n - slots[layer])..<n
    }

    /// Where the ring of `layer` starts: the row of its oldest held position (0 for a full layer).
    func ringStart(layer: Int) -> Int {
        let first = positions(layer: layer).lowerBound
        return first == 0 ? 0 : first % slots[layer]
    }

    /// Appends `n` tokens to `layer`: `keys [B, Hkv, n, d]`, `values [B, Hkv, n, dv]` (views are
    /// read through their strides), at positions `lengths[layer] ..< lengths[layer] + n`. A
    /// windowed layer writes them into its ring (wrapping around, the oldest positions overwritten)
    /// and takes at most ``maxAppend`` tokens at once.
    ///
    /// - Throws: ``AttentionError/cacheFull(capacity:length:appending:)`` past the capacity;
    ///   ``AttentionError/appendTooLong(maxAppend:appending:)`` for more than `maxAppend` tokens on
    ///   a windowed layer; shape, NaN/Inf and range errors as typed ``AttentionError``s. Nothing is
    ///   appended when it throws.
    public mutating func append(layer: Int, keys: Tensor, values: Tensor) throws {
        guard (0..<layers).contains(layer) else { throw AttentionError.invalidArgument(name: "layer", value: "\(layer)", expected: "0..<\(layers)") }
        guard keys.rank == 4, values.rank == 4, keys.shape[0] == batch, keys.shape[1] == kvHeads, keys.shape[3] == headDimension,
              values.shape[0] == batch, values.shape[1] == kvHeads, values.shape[3] == valueDimension,
              keys.shape[2] == values.shape[2] else {
            throw AttentionError.shapeMismatch(tensor: keys.rank == 4 && keys.shape[0] == batch && keys.shape[1] == kvHeads && keys.shape[3] == headDimension ? "values" : "keys",
                                               shape: keys.rank == 4 && keys.shape[0] == batch && keys.shape[1] == kvHeads && keys.shape[3] == headDimension ? values.shape : keys.shape,
                                               expected: "the cache's [B, Hkv, ·, d] = [\(batch), \(kvHeads), ·, \(headDimension)] / dv = \(valueDimension), keys and values of one length")
        }
        let n = keys.shape[2], length = lengths[layer]
        guard n <= capacity - length else { throw AttentionError.cacheFull(capacity: capacity, length: length, appending: n) }
        if windows[layer] != nil && n > maxAppend { throw AttentionError.appendTooLong(maxAppend: maxAppend, appending: n) }
        let k = keys.scanValues(), v = values.scanValues()
        if let i = k.invalidIndex { throw AttentionError.nonFinite(name: "keys", index: i) }
        if let i = v.invalidIndex { throw AttentionError.nonFinite(name: "values", index: i) }
        let limit = type.largestMagnitude
        if k.maxMagnitude > limit || v.maxMagnitude > limit {
            throw AttentionError.overflow(quantity: "the \(k.maxMagnitude > limit ? "keys" : "values") stored in a \(type) KV cache", bound: Double(max(k.maxMagnitude, v.maxMagnitude)), limit: Double(limit))
        }
        maxKey[layer] = max(maxKey[layer], k.maxMagnitude)
        maxValue[layer] = max(maxValue[layer], v.maxMagnitude)
        Self.write(keys, into: &keyStore[layer], type: type, width: headDimension, slots: slots[layer], position: length)
        Self.write(values, into: &valueStore[layer], type: type, width: valueDimension, slots: slots[layer], position: length)
        if length < sinks[layer] {
            let m = min(n, sinks[layer] - length)
            for (src, dst) in [(keys, layer), (values, layer + layers)] {
                let rows = try src.rows(0..<m).contiguous()
                // Locals only: a nested function reading `self` would hold a copy of the stores.
                let width = rows.shape[3], S = sinks[layer], heads = batch * kvHeads
                func copy(_ store: inout Tensor) {
                    store.withUnsafeMutableBufferPointer { d in
                        rows.withUnsafePointer { p in
                            for bh in 0..<heads {
                                (d.baseAddress! + (bh * S + length) * width).update(from: p + bh * m * width, count: m * width)
                            }
                        }
                    }
                }
                if dst < layers { copy(&sinkKeyStore[layer]) } else { copy(&sinkValueStore[layer]) }
            }
        }
        lengths[layer] = length + n
    }

    /// Writes `src [B, Hkv, n, width]` (`n <= slots`) at positions `position ..< position + n` of
    /// every (batch, head) of a store of `slots` rows per head, position `p` at row `p mod slots`
    /// (one contiguous run, or two across the ring's end), converting to `type`.
    ///
    /// Static on purpose: a non-mutating method called from a mutating one with `&keyStore[layer]`
    /// gets a copy of `self`, which holds a second reference to every store, so the write copied
    /// the whole layer's store first (copy-on-write) on every append: 14 MB per token on SmolLM2.
    static func write(_ src: Tensor, into dst: inout Tensor, type: KVCacheType, width w: Int, slots: Int, position: Int) {
        let s = src.contiguous()
        let (B, H, n) = (s.shape[0], s.shape[1], s.shape[2])
        precondition(n <= slots, "an append longer than the layer's rows")
        if n == 0 { return }
        let row = position % slots, first = min(n, slots - row)
        let rowBytes = type.rowBytes(w), kind = type.kernelKind
        dst.withUnsafeMutableBufferPointer { d in
            let base = UnsafeMutableRawPointer(d.baseAddress!)
            s.withUnsafePointer { p in
                for bh in 0..<(B * H) {
                    let from = p + bh * n * w, head = base + bh * slots * rowBytes
                    ak_kv_encode_rows(kind, from, w, first, w, head + row * rowBytes, rowBytes)
                    if first < n { ak_kv_encode_rows(kind, from + first * w, w, n - first, w, head, rowBytes) }
                }
            }
        }
    }

    /// The held positions of a store as floats `[B, Hkv, held, w]`, in position order: a view
    /// (float32, ring not wrapped) or a copy (dequantised, or the ring's two segments joined).
    func filled(_ store: Tensor, width w: Int, layer: Int) throws -> Tensor {
        let held = positions(layer: layer).count, start = ringStart(layer: layer), cap = slots[layer]
        if type == .float32 && start == 0 { return try store.rows(0..<held) }
        var out = try Tensor(uninitialized: [batch, kvHeads, held, w])
        if held == 0 { return out }
        let rowBytes = type.rowBytes(w), kind = type.kernelKind
        let first = min(held, cap - start)
        store.withUnsafePointer { p in
            let base = UnsafeRawPointer(p)
            out.withUnsafeMutableBufferPointer { o in
                for bh in 0..<(batch * kvHeads) {
                    let head = base + bh * cap * rowBytes, to = o.baseAddress! + bh * held * w
                    ak_kv_decode_rows(kind, head + start * rowBytes, rowBytes, first, w, to, w)
                    if first < held { ak_kv_decode_rows(kind, head, rowBytes, held - first, w, to + first * w, w) }
                }
            }
        }
        return out
    }

    /// The held keys of `layer` (``positions(layer:)``), `[B, Hkv, held, d]` in position order: a
    /// view of a float32 full layer, a copy otherwise (dequantised, or a wrapped ring's segments
    /// joined; decoding never makes one).
    public func keys(layer: Int) throws -> Tensor {
        guard (0..<layers).contains(layer) else { throw AttentionError.invalidArgument(name: "layer", value: "\(layer)", expected: "0..<\(layers)") }
        return try filled(keyStore[layer], width: headDimension, layer: layer)
    }

    /// The held values of `layer`, `[B, Hkv, held, dv]` in position order (view or copy as ``keys(layer:)``).
    public func values(layer: Int) throws -> Tensor {
        guard (0..<layers).contains(layer) else { throw AttentionError.invalidArgument(name: "layer", value: "\(layer)", expected: "0..<\(layers)") }
        return try filled(valueStore[layer], width: valueDimension, layer: layer)
    }

    /// A float32 layer's stores as tensors `[B, Hkv, slots, ·]` (every row, storage order): what
    /// the float32 kernels read, logical key `j` (position `positions.lowerBound + j`) at row
    /// `(ringStart + j) mod slots`.
    func storedTensors(layer: Int) -> (keys: Tensor, values: Tensor) {
        (keyStore[layer], valueStore[layer])
    }

    /// The stored rows of `layer` for the kernels: raw pointers into this cache's storage (valid
    /// while the cache is alive and not mutated), byte strides of (batch, head, position).
    func withStoredRows<R>(layer: Int, _ body: (StoredKV) throws -> R) rethrows -> R {
        let kb = type.rowBytes(headDimension), vb = type.rowBytes(valueDimension), cap = slots[layer]
        return try keyStore[layer].withUnsafePointer { k in
            try valueStore[layer].withUnsafePointer { v in
                try body(StoredKV(kind: type.kernelKind, keys: UnsafeRawPointer(k), values: UnsafeRawPointer(v),
                                  keyStride: (kvHeads * cap * kb, cap * kb, kb), valueStride: (kvHeads * cap * vb, cap * vb, vb)))
            }
        }
    }

    /// Forgets every token (capacity and memory are kept).
    public mutating func reset() {
        lengths = Array(repeating: 0, count: layers)
        heldFrom = Array(repeating: 0, count: layers)
        maxKey = Array(repeating: 0, count: layers)
        maxValue = Array(repeating: 0, count: layers)
    }

    /// Copies the held positions of `other` (same layers, batch, heads and widths, no more
    /// positions than this capacity) into this cache: how a caller grows a cache. Between storage
    /// types the values convert (one layer's float32 copy at a time); float32 magnitudes beyond
    /// this type's ``KVCacheType/largestMagnitude`` throw.
    ///
    /// Windows may differ: a windowed layer here keeps the last of the source's held positions
    /// that fit its ring, and needs at least `min(length, W - 1)` of them (what its next append's
    /// first query reads before the append); a full layer here needs every position the source
    /// appended (a source ring that dropped positions throws ``AttentionError/invalidWindow(window:layer:reason:)``).
    ///
    /// With `positions`, only the source's first `positions` positions are taken (a prompt's
    /// shared prefix: a server's prefix cache); a source layer that no longer holds what this
    /// cache's layer needs of them throws ``AttentionError/invalidWindow(window:layer:reason:)``.
    public mutating func copy(from other: KVCache, positions limit: Int? = nil) throws {
        guard other.layers == layers, other.batch == batch, other.kvHeads == kvHeads,
              other.headDimension == headDimension, other.valueDimension == valueDimension else {
            throw AttentionError.shapeMismatch(tensor: "source cache [layers, B, Hkv, d, dv]", shape: [other.layers, other.batch, other.kvHeads, other.headDimension, other.valueDimension],
                                               expected: "this cache's \([layers, batch, kvHeads, headDimension, valueDimension])")
        }
        guard other.sinks == sinks else { throw AttentionError.shapeMismatch(tensor: "source cache's sinks", shape: other.sinks, expected: "this cache's sinks \(sinks)") }
        if let limit, limit < 0 { throw AttentionError.invalidArgument(name: "positions", value: "\(limit)", expected: ">= 0") }
        // Per layer: the positions taken, and how many of them the source still holds (the last ones).
        func taken(_ layer: Int) -> (length: Int, held: Int) {
            let length = min(other.lengths[layer], limit ?? .max), from = other.positions(layer: layer).lowerBound
            return (length, max(0, length - from))
        }
        for layer in 0..<layers where taken(layer).length > capacity {
            throw AttentionError.cacheFull(capacity: capacity, length: 0, appending: taken(layer).length)
        }
        for layer in 0..<layers {
            let (length, held) = taken(layer)
            let keep = min(held, slots[layer])
            if let w = windows[layer] {
                guard keep >= min(length, w - 1) else {
                    throw AttentionError.invalidWindow(window: w, layer: layer, reason: "the source layer holds \(held) positions; the window needs the last \(min(length, w - 1))")
                }
            } else if held < length {
                throw AttentionError.invalidWindow(window: nil, layer: layer, reason: "the source layer keeps only its last \(held) of \(length) positions; a full layer needs them all")
            }
        }
        for layer in 0..<layers where max(other.maxKey[layer], other.maxValue[layer]) > type.largestMagnitude {
            throw AttentionError.overflow(quantity: "layer \(layer) of the source, stored in a \(type) KV cache", bound: Double(max(other.maxKey[layer], other.maxValue[layer])), limit: Double(type.largestMagnitude))
        }
        for layer in 0..<layers {
            let (length, held) = taken(layer)
            let keep = min(held, slots[layer])
            let k = try other.keys(layer: layer).rows((held - keep)..<held), v = try other.values(layer: layer).rows((held - keep)..<held)
            Self.write(k, into: &keyStore[layer], type: type, width: headDimension, slots: slots[layer], position: length - keep)
            Self.write(v, into: &valueStore[layer], type: type, width: valueDimension, slots: slots[layer], position: length - keep)
            lengths[layer] = length
            heldFrom[layer] = length - keep
            maxKey[layer] = other.maxKey[layer]
            maxValue[layer] = other.maxValue[layer]
            sinkKeyStore[layer] = other.sinkKeyStore[layer]
            sinkValueStore[layer] = other.sinkValueStore[layer]
        }
    }
}
