import AttentionTensor
import CAttentionKernels

/// Keys and values of past tokens for decoding, per layer: `[B, Hkv, capacity, d]` keys and
/// `[B, Hkv, capacity, dv]` values, allocated once up front.
///
/// Appending writes the new tokens' rows in place; ``keys(layer:)`` and ``values(layer:)`` are views
/// of the filled part (`[B, Hkv, length, d]`, strides over the full capacity), which attention reads
/// without copying. Capacity is fixed: appending past it throws ``AttentionError/cacheFull(capacity:length:appending:)``
/// (no silent growth: reallocating a multi-GiB cache mid-generation is a decision for the caller,
/// who can make a larger cache and ``copy(from:)`` into it).
///
/// `KVCache` is a value: a view kept across an append keeps the contents it had (the append then
/// copies the layer); views used within one step, as in a decode loop, cost nothing.
///
/// The storage ``type`` may be lower precision than float32 (``KVCacheType``): bf16, f16 or int8
/// (ggml's q8_0). Appends convert; ``decodeAttention(queries:cache:layer:scale:alibi:threads:)``
/// reads the stored rows directly; ``keys(layer:)`` and ``values(layer:)`` of such a cache are
/// dequantised copies, for inspection.
public struct KVCache: Sendable {
    public let layers: Int, batch: Int, kvHeads: Int, capacity: Int, headDimension: Int, valueDimension: Int
    /// How keys and values are stored.
    public let type: KVCacheType
    /// Filled positions per layer.
    public private(set) var lengths: [Int]
    var keyStore: [Tensor], valueStore: [Tensor]
    /// Largest |key| and |value| appended per layer (measured by the NaN/Inf scan at append time):
    /// what decoding's overflow bound needs without scanning the cache again.
    var maxKey: [Float], maxValue: [Float]

    /// A cache for `layers` layers of `batch` sequences with `kvHeads` KV heads.
    public init(layers: Int, batch: Int, kvHeads: Int, capacity: Int, headDimension d: Int, valueDimension dv: Int? = nil,
                type: KVCacheType = .float32) throws {
        let dv = dv ?? d
        guard layers >= 1, batch >= 1, kvHeads >= 1, capacity >= 1, d >= 1, dv >= 1 else {
            throw AttentionError.invalidArgument("KV cache sizes must be positive (layers \(layers), B \(batch), Hkv \(kvHeads), capacity \(capacity), d \(d), dv \(dv))")
        }
        self.layers = layers
        self.batch = batch
        self.kvHeads = kvHeads
        self.capacity = capacity
        headDimension = d
        valueDimension = dv
        lengths = Array(repeating: 0, count: layers)
        maxKey = Array(repeating: 0, count: layers)
        maxValue = Array(repeating: 0, count: layers)
        // Uninitialised: pages are only touched as tokens are appended. Huge pages: every decode
        // step streams the whole filled cache, and with 4 KiB pages that is a TLB miss per 8 keys
        // (d = 128); measured at 128K keys, Hkv = 8: 42–43 ms per step against 46–53 without.
        self.type = type
        // The whole cache's size, checked before anything is allocated.
        let total = Self.bytes(layers: layers, batch: batch, kvHeads: kvHeads, capacity: capacity, headDimension: d,
                               valueDimension: dv, type: type)
        guard let total else {
            throw AttentionError.tooLarge("a KV cache of \(layers) layers × B \(batch) × Hkv \(kvHeads) × \(capacity) positions × d \(d)/\(dv) overflows")
        }
        do { try MemoryBudget.check(total) } catch {
            throw AttentionError.tooLarge("a \(type) KV cache of \(total) bytes; the memory budget allows \(MemoryBudget.availableBytes)")
        }
        // Float32 caches are tensors `[B, Hkv, capacity, d]` (views read them in place); the other
        // types are rows of bytes (`type.rowBytes(d)` each) in a flat float buffer used as storage.
        func store(_ width: Int) throws -> Tensor {
            if type == .float32 { return try Tensor(uninitialized: [batch, kvHeads, capacity, width], hugePages: true) }
            return try Tensor(uninitialized: [(batch * kvHeads * capacity * type.rowBytes(width) + 3) / 4], hugePages: true)
        }
        keyStore = try (0..<layers).map { _ in try store(d) }
        valueStore = try (0..<layers).map { _ in try store(dv) }
    }

    /// Bytes of a cache: `layers · B · Hkv · capacity · (rowBytes(d) + rowBytes(dv))`, with
    /// `rowBytes(d)` = 4d (f32), 2d (bf16, f16) or 34·ceil(d/32) (int8); nil when that overflows.
    public static func bytes(layers: Int, batch: Int, kvHeads: Int, capacity: Int, headDimension d: Int, valueDimension dv: Int? = nil,
                             type: KVCacheType = .float32) -> Int? {
        guard d <= Int.max / 64, (dv ?? d) <= Int.max / 64 else { return nil }
        var n = type.rowBytes(d) + type.rowBytes(dv ?? d)
        for f in [layers, batch, kvHeads, capacity] {
            let (p, o) = n.multipliedReportingOverflow(by: f)
            if o { return nil }
            n = p
        }
        return n
    }

    /// Bytes this cache holds.
    public var bytes: Int {
        Self.bytes(layers: layers, batch: batch, kvHeads: kvHeads, capacity: capacity, headDimension: headDimension,
                   valueDimension: valueDimension, type: type)!
    }

    /// Appends `n` tokens to `layer`: `keys [B, Hkv, n, d]`, `values [B, Hkv, n, dv]`.
    public mutating func append(layer: Int, keys: Tensor, values: Tensor) throws {
        guard (0..<layers).contains(layer) else { throw AttentionError.invalidArgument("layer \(layer) outside 0..<\(layers)") }
        guard keys.rank == 4, values.rank == 4, keys.shape[0] == batch, keys.shape[1] == kvHeads, keys.shape[3] == headDimension,
              values.shape[0] == batch, values.shape[1] == kvHeads, values.shape[3] == valueDimension,
              keys.shape[2] == values.shape[2] else {
            throw AttentionError.shapeMismatch("append \(keys.shape) / \(values.shape) to a cache of [B, Hkv, ·, d] = [\(batch), \(kvHeads), ·, \(headDimension)] / dv = \(valueDimension)")
        }
        let k = keys.scanValues(), v = values.scanValues()
        if let i = k.invalidIndex { throw AttentionError.nonFinite(name: "keys", index: i) }
        if let i = v.invalidIndex { throw AttentionError.nonFinite(name: "values", index: i) }
        let n = keys.shape[2], length = lengths[layer]
        guard length + n <= capacity else { throw AttentionError.cacheFull(capacity: capacity, length: length, appending: n) }
        let limit = type.largestMagnitude
        if k.maxMagnitude > limit || v.maxMagnitude > limit {
            throw AttentionError.overflow("a \(type) KV cache stores magnitudes up to \(limit); the \(k.maxMagnitude > limit ? "keys reach \(k.maxMagnitude)" : "values reach \(v.maxMagnitude)")")
        }
        maxKey[layer] = max(maxKey[layer], k.maxMagnitude)
        maxValue[layer] = max(maxValue[layer], v.maxMagnitude)
        write(keys, into: &keyStore[layer], width: headDimension, at: length)
        write(values, into: &valueStore[layer], width: valueDimension, at: length)
        lengths[layer] = length + n
    }

    /// Writes `src [B, Hkv, n, width]` at position `row` of every (batch, head), converting to the stored type.
    func write(_ src: Tensor, into dst: inout Tensor, width w: Int, at row: Int) {
        let s = src.contiguous()
        let (B, H, n, cap) = (s.shape[0], s.shape[1], s.shape[2], capacity)
        let rowBytes = type.rowBytes(w), kind = type.kernelKind
        dst.withUnsafeMutableBufferPointer { d in
            let base = UnsafeMutableRawPointer(d.baseAddress!)
            s.withUnsafePointer { p in
                for bh in 0..<(B * H) {
                    ak_kv_encode_rows(kind, p + bh * n * w, w, n, w, base + (bh * cap + row) * rowBytes, rowBytes)
                }
            }
        }
    }

    /// The first `length` positions of a store as floats: a view (float32) or a dequantised copy.
    func filled(_ store: Tensor, width w: Int, length: Int) throws -> Tensor {
        if type == .float32 { return try store.rows(0..<length) }
        var out = try Tensor(uninitialized: [batch, kvHeads, length, w])
        let rowBytes = type.rowBytes(w), kind = type.kernelKind, cap = capacity
        store.withUnsafePointer { p in
            let base = UnsafeRawPointer(p)
            out.withUnsafeMutableBufferPointer { o in
                for bh in 0..<(batch * kvHeads) {
                    ak_kv_decode_rows(kind, base + bh * cap * rowBytes, rowBytes, length, w, o.baseAddress! + bh * length * w, w)
                }
            }
        }
        return out
    }

    /// The filled keys of `layer`, `[B, Hkv, length, d]`: a view of a float32 cache, a dequantised
    /// copy of any other type (decoding never makes one).
    public func keys(layer: Int) throws -> Tensor {
        guard (0..<layers).contains(layer) else { throw AttentionError.invalidArgument("layer \(layer) outside 0..<\(layers)") }
        return try filled(keyStore[layer], width: headDimension, length: lengths[layer])
    }

    /// The filled values of `layer`, `[B, Hkv, length, dv]`: a view of a float32 cache, a
    /// dequantised copy of any other type.
    public func values(layer: Int) throws -> Tensor {
        guard (0..<layers).contains(layer) else { throw AttentionError.invalidArgument("layer \(layer) outside 0..<\(layers)") }
        return try filled(valueStore[layer], width: valueDimension, length: lengths[layer])
    }

    /// The stored rows of `layer` for the kernels: raw pointers into this cache's storage (valid
    /// while the cache is alive and not mutated), byte strides of (batch, head, position).
    func withStoredRows<R>(layer: Int, _ body: (StoredKV) throws -> R) rethrows -> R {
        let kb = type.rowBytes(headDimension), vb = type.rowBytes(valueDimension), cap = capacity
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
        maxKey = Array(repeating: 0, count: layers)
        maxValue = Array(repeating: 0, count: layers)
    }

    /// Copies the filled part of `other` (same layers, batch, heads and widths, no more tokens
    /// than this capacity) into this cache: how a caller grows a cache. Between storage types the
    /// values convert (one layer's float32 copy at a time); float32 magnitudes beyond this type's
    /// ``KVCacheType/largestMagnitude`` throw.
    public mutating func copy(from other: KVCache) throws {
        guard other.layers == layers, other.batch == batch, other.kvHeads == kvHeads,
              other.headDimension == headDimension, other.valueDimension == valueDimension else {
            throw AttentionError.shapeMismatch("caches differ in layers, batch, heads or widths")
        }
        for layer in 0..<layers where other.lengths[layer] > capacity {
            throw AttentionError.cacheFull(capacity: capacity, length: 0, appending: other.lengths[layer])
        }
        for layer in 0..<layers where max(other.maxKey[layer], other.maxValue[layer]) > type.largestMagnitude {
            throw AttentionError.overflow("a \(type) KV cache stores magnitudes up to \(type.largestMagnitude); layer \(layer) of the source reaches \(max(other.maxKey[layer], other.maxValue[layer]))")
        }
        for layer in 0..<layers {
            write(try other.keys(layer: layer), into: &keyStore[layer], width: headDimension, at: 0)
            write(try other.values(layer: layer), into: &valueStore[layer], width: valueDimension, at: 0)
            lengths[layer] = other.lengths[layer]
            maxKey[layer] = other.maxKey[layer]
            maxValue[layer] = other.maxValue[layer]
        }
    }
}

