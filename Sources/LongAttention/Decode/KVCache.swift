import AttentionTensor

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
public struct KVCache: Sendable {
    public let layers: Int, batch: Int, kvHeads: Int, capacity: Int, headDimension: Int, valueDimension: Int
    /// Filled positions per layer.
    public private(set) var lengths: [Int]
    var keyStore: [Tensor], valueStore: [Tensor]
    /// Largest |key| and |value| appended per layer (measured by the NaN/Inf scan at append time):
    /// what decoding's overflow bound needs without scanning the cache again.
    var maxKey: [Float], maxValue: [Float]

    /// A cache for `layers` layers of `batch` sequences with `kvHeads` KV heads.
    public init(layers: Int, batch: Int, kvHeads: Int, capacity: Int, headDimension d: Int, valueDimension dv: Int? = nil) throws {
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
        keyStore = try (0..<layers).map { _ in try Tensor(uninitialized: [batch, kvHeads, capacity, d], hugePages: true) }
        valueStore = try (0..<layers).map { _ in try Tensor(uninitialized: [batch, kvHeads, capacity, dv], hugePages: true) }
    }

    /// Bytes of a cache: `layers · B · Hkv · capacity · (d + dv) · 4` (`2 · layers · B · Hkv · capacity · d · 4` when dv = d).
    public static func bytes(layers: Int, batch: Int, kvHeads: Int, capacity: Int, headDimension d: Int, valueDimension dv: Int? = nil) -> Int {
        layers * batch * kvHeads * capacity * (d + (dv ?? d)) * MemoryLayout<Float>.stride
    }

    /// Bytes this cache holds.
    public var bytes: Int {
        Self.bytes(layers: layers, batch: batch, kvHeads: kvHeads, capacity: capacity, headDimension: headDimension, valueDimension: valueDimension)
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
        maxKey[layer] = max(maxKey[layer], k.maxMagnitude)
        maxValue[layer] = max(maxValue[layer], v.maxMagnitude)
        Self.write(keys, into: &keyStore[layer], at: length)
        Self.write(values, into: &valueStore[layer], at: length)
        lengths[layer] = length + n
    }

    static func write(_ src: Tensor, into dst: inout Tensor, at row: Int) {
        let s = src.contiguous()
        let (B, H, n, w, cap) = (s.shape[0], s.shape[1], s.shape[2], s.shape[3], dst.shape[2])
        dst.withUnsafeMutableBufferPointer { d in
            s.withUnsafePointer { p in
                for bh in 0..<(B * H) {
                    (d.baseAddress! + (bh * cap + row) * w).update(from: p + bh * n * w, count: n * w)
                }
            }
        }
    }

    /// The filled keys of `layer`: a `[B, Hkv, length, d]` view.
    public func keys(layer: Int) throws -> Tensor {
        guard (0..<layers).contains(layer) else { throw AttentionError.invalidArgument("layer \(layer) outside 0..<\(layers)") }
        return try keyStore[layer].rows(0..<lengths[layer])
    }

    /// The filled values of `layer`: a `[B, Hkv, length, dv]` view.
    public func values(layer: Int) throws -> Tensor {
        guard (0..<layers).contains(layer) else { throw AttentionError.invalidArgument("layer \(layer) outside 0..<\(layers)") }
        return try valueStore[layer].rows(0..<lengths[layer])
    }

    /// Forgets every token (capacity and memory are kept).
    public mutating func reset() {
        lengths = Array(repeating: 0, count: layers)
        maxKey = Array(repeating: 0, count: layers)
        maxValue = Array(repeating: 0, count: layers)
    }

    /// Copies the filled part of `other` (same layers, batch, heads and widths, no more tokens
    /// than this capacity) into this cache: how a caller grows a cache.
    public mutating func copy(from other: KVCache) throws {
        guard other.layers == layers, other.batch == batch, other.kvHeads == kvHeads,
              other.headDimension == headDimension, other.valueDimension == valueDimension else {
            throw AttentionError.shapeMismatch("caches differ in layers, batch, heads or widths")
        }
        for layer in 0..<layers {
            guard other.lengths[layer] <= capacity else {
                throw AttentionError.cacheFull(capacity: capacity, length: 0, appending: other.lengths[layer])
            }
            Self.write(try other.keys(layer: layer), into: &keyStore[layer], at: 0)
            Self.write(try other.values(layer: layer), into: &valueStore[layer], at: 0)
            lengths[layer] = other.lengths[layer]
            maxKey[layer] = other.maxKey[layer]
            maxValue[layer] = other.maxValue[layer]
        }
    }
}

