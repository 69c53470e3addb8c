import AttentionTensor

/// Infini-Attention's compressive memory for a batch of sequences: per KV head a matrix
/// `M [d, dv]` and a normaliser `z [d]`, both zero at the start — `Hkv·(d·dv + d)` floats per
/// sequence, whatever the length of the stream.
///
/// Saved as one `.npy` of shape `[B, Hkv, d, dv + 1]`: columns `0 ..< dv` hold `M`, the last `z`,
/// so a stream can resume in another process (``save(to:)``, ``load(from:)``).
public struct CompressiveMemory: Sendable {
    public let batch: Int, kvHeads: Int, headDimension: Int, valueDimension: Int
    /// `[B, Hkv, d, dv]`.
    public internal(set) var memory: Tensor
    /// `[B, Hkv, d]`.
    public internal(set) var normalizer: Tensor
    /// Tokens written so far.
    public internal(set) var tokens: Int = 0

    public init(batch: Int, kvHeads: Int, headDimension d: Int, valueDimension dv: Int) throws {
        guard batch >= 1, kvHeads >= 1, d >= 1, dv >= 1 else {
            throw AttentionError.invalidArgument(name: "memory sizes [B, Hkv, d, dv]", value: "\([batch, kvHeads, d, dv])", expected: "all positive")
        }
        self.batch = batch
        self.kvHeads = kvHeads
        headDimension = d
        valueDimension = dv
        memory = try Tensor(zeros: [batch, kvHeads, d, dv])
        normalizer = try Tensor(zeros: [batch, kvHeads, d])
    }

    /// Bytes of state: `B·Hkv·(d·dv + d)·4`.
    public var stateBytes: Int { batch * kvHeads * (headDimension * valueDimension + headDimension) * 4 }

    /// Back to the empty memory.
    public mutating func reset() {
        memory.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
        normalizer.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
        tokens = 0
    }

    /// Writes `[B, Hkv, d, dv + 1]` (M, then z as the last column) to `path`.
    public func save(to path: String) throws {
        let (B, H, d, dv) = (batch, kvHeads, headDimension, valueDimension)
        var packed = try Tensor(uninitialized: [B, H, d, dv + 1])
        let m = memory.contiguous(), z = normalizer.contiguous()
        packed.withUnsafeMutableBufferPointer { p in
            m.withUnsafePointer { pm in
                z.withUnsafePointer { pz in
                    for row in 0..<(B * H * d) {
                        (p.baseAddress! + row * (dv + 1)).update(from: pm + row * dv, count: dv)
                        p[row * (dv + 1) + dv] = pz[row]
                    }
                }
            }
        }
        try Numpy.write(packed, to: path)
    }

    /// Reads a memory written by ``save(to:)``.
    public static func load(from path: String) throws -> CompressiveMemory {
        let packed = try Numpy.readTensor(path, rank: 4)
        let (B, H, d, w) = (packed.shape[0], packed.shape[1], packed.shape[2], packed.shape[3])
        guard w >= 2 else { throw AttentionError.shapeMismatch(tensor: "memory file \(path)", shape: packed.shape, expected: "[B, Hkv, d, dv + 1] with dv >= 1") }
        var mem = try CompressiveMemory(batch: B, kvHeads: H, headDimension: d, valueDimension: w - 1)
        mem.memory.withUnsafeMutableBufferPointer { pm in
            mem.normalizer.withUnsafeMutableBufferPointer { pz in
                packed.withUnsafePointer { p in
                    for row in 0..<(B * H * d) {
                        (pm.baseAddress! + row * (w - 1)).update(from: p + row * w, count: w - 1)
                        pz[row] = p[row * w + w - 1]
                    }
                }
            }
        }
        guard mem.memory.scalars.allSatisfy(\.isFinite), mem.normalizer.scalars.allSatisfy({ $0.isFinite && $0 >= 0 }) else {
            throw AttentionError.invalidArgument(name: "memory file \(path)", value: "non-finite values or a negative normaliser", expected: "finite values and normalisers >= 0")
        }
        return mem
    }
}
