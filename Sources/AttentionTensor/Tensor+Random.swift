import Foundation

/// SplitMix64: a small, fast generator whose sequence is fixed by its seed on every machine.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in the open interval (0, 1), from the top 53 bits.
    public mutating func nextUnitOpen() -> Double { (Double(next() >> 11) + 0.5) * 0x1p-53 }
    /// A standard normal draw: Box–Muller's cosine branch, in Float64, from two uniforms (the one
    /// draw the model's initialisation and FAVOR+'s features share).
    public mutating func nextNormal() -> Double { nextNormalPair().cosine }

    /// Box–Muller (the package's one implementation), in Float64: two independent normal draws of
    /// standard deviation `scale` from two uniforms, `r·cos θ` and `r·sin θ` with
    /// `r = sqrt(−2 ln u₁)·scale`, `θ = 2π·u₂`.
    public mutating func nextNormalPair(scale: Double = 1) -> (cosine: Double, sine: Double) {
        let u1 = nextUnitOpen(), u2 = nextUnitOpen()
        let r = (-2 * Foundation.log(u1)).squareRoot() * scale
        return (r * Foundation.cos(2 * Double.pi * u2), r * Foundation.sin(2 * Double.pi * u2))
    }
}

extension Tensor {
    /// Standard normal samples (mean 0, standard deviation `std`) drawn from `seed`.
    ///
    /// Box–Muller in Float64 from SplitMix64, rounded to Float32: the integer stream is the same on
    /// every machine, and the float64 transcendental results are rounded to float32, so the
    /// numbers agree across machines and thread counts.
    public static func randomNormal(_ shape: [Int], seed: UInt64, std: Float = 1) throws -> Tensor {
        var t = try Tensor(uninitialized: shape)
        var rng = SplitMix64(seed: seed)
        let s = Double(std)
        t.withUnsafeMutableBufferPointer { buf in
            var i = 0
            while i < buf.count {
                let (c, sn) = rng.nextNormalPair(scale: s)
                buf[i] = Float(c)
                if i + 1 < buf.count { buf[i + 1] = Float(sn) }
                i += 2
            }
        }
        return t
    }
}

extension Tensor {
    /// Uniform samples in `[-bound, bound)` drawn from `seed` (SplitMix64, 24 bits per sample);
    /// about 10× faster than ``randomNormal(_:seed:std:)`` for benchmark-sized inputs. The default
    /// bound sqrt(3) gives unit variance.
    public static func randomUniform(_ shape: [Int], seed: UInt64, bound: Float = Float(3).squareRoot()) throws -> Tensor {
        var t = try Tensor(uninitialized: shape)
        var rng = SplitMix64(seed: seed)
        let scale = 2 * bound / Float(1 << 24)
        t.withUnsafeMutableBufferPointer { buf in
            var i = 0
            while i < buf.count {
                let r = rng.next()
                buf[i] = Float(r >> 40) * scale - bound
                if i + 1 < buf.count { buf[i + 1] = Float((r >> 16) & 0xFF_FFFF) * scale - bound }
                i += 2
            }
        }
        return t
    }
}
