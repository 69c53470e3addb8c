import AttentionTensor
import Foundation
@testable import MixtureOfExperts
import XCTest

/// The mixture-of-experts layer against the float64 reference (Float64Reference.swift): outputs,
/// routing and statistics, capacity, gradients (central differences in float64), determinism
/// across thread counts, and the typed errors.
///
/// Tolerances: outputs, routing weights and losses within 2e-6 of the reference relative to the
/// largest reference value (measured: ≤ 3e-7; float32 sums over D = 10 and F_e ≤ 12 terms);
/// gradients within 5e-6 per tensor (measured: ≤ 7e-7) against central differences (step 1e-5,
/// truncation error about 1e-10) of the float64 loss with the selection fixed.
final class MixtureOfExpertsTests: XCTestCase {
    let D = 10
    let homogeneous = [8, 8, 8, 8]
    let heterogeneous = [3, 12, 5, 9, 7]
    let forwardTolerance = 2e-6
    let gradientTolerance = 5e-6

    func tensor(_ values: [Float], _ shape: [Int]) -> Tensor { try! Tensor(shape: shape, scalars: values) }

    // MARK: Forward

    func testForwardMatchesFloat64Reference() throws {
        var worst = 0.0, cases = 0
        for (s, sizes) in [homogeneous, heterogeneous].enumerated() {
            let layer = try MixtureOfExperts.random(hidden: D, expertSizes: sizes, seed: 11 + UInt64(s))
            let ref = Float64MoE(layer)
            for T in [1, 7, 33] {
                let xf = randomRows(T * D, seed: 100 + UInt64(T))
                let xd = xf.map(Double.init)
                for k in Set([1, 2, sizes.count]).sorted() {
                    for renormalize in [false, true] {
                        let config = try layer.config(topK: k, renormalize: renormalize)
                        let (out, r) = try layer.forward(tensor(xf, [T, D]), config: config, threads: 2)
                        let routing = ref.route(xd, tokens: T, k: k, capacity: nil)
                        let label = "sizes \(sizes) T \(T) k \(k) renormalize \(renormalize)"
                        XCTAssertEqual(r.expertIndices.map(Int.init), routing.choices.flatMap { $0 }, label)
                        let (p, lse) = ref.router(xd, tokens: T)
                        let w = ref.weights(p, routing, renormalize: renormalize)
                        XCTAssertLessThan(relativeError(r.routingWeights, w.flatMap { $0 }), forwardTolerance, label)
                        XCTAssertLessThan(relativeError(r.routerProbabilities.scalars, p.flatMap { $0 }), forwardTolerance, label)
                        XCTAssertLessThan(relativeError(r.routerLogSumExp, lse), forwardTolerance, label)
                        let e = relativeError(out.scalars, ref.forward(xd, tokens: T, renormalize: renormalize, routing: routing))
                        XCTAssertLessThan(e, forwardTolerance, label)
                        worst = max(worst, e)
                        XCTAssertEqual(out.shape, [T, D])
                        XCTAssertEqual(r.selectedTokenCounts, routing.selected, label)
                        XCTAssertEqual(r.expertTokenCounts, routing.selected, label)
                        XCTAssertEqual(r.droppedSlots, 0)
                        XCTAssertNil(r.capacity)
                        XCTAssertEqual(r.expertFlops, zip(routing.selected, sizes).reduce(0) { $0 + $1.0 * 6 * D * $1.1 }, label)
                        XCTAssertEqual(r.routerFlops, 2 * T * D * sizes.count)
                        let aux = ref.auxiliaryLosses(xd, tokens: T, routing: routing)
                        XCTAssertEqual(r.loadBalancingLoss, aux.loadBalancing, accuracy: forwardTolerance * max(1, aux.loadBalancing), label)
                        XCTAssertEqual(r.zLoss, aux.z, accuracy: forwardTolerance * max(1, aux.z), label)
                        cases += 1
                    }
                }
            }
        }
        XCTAssertEqual(cases, 2 * 3 * 3 * 2)
        print("forward: worst relative error \(worst) over \(cases) cases")
    }

    /// Equal probabilities go to the lower expert index, and the weights follow.
    func testTiesGoToTheLowerIndex() throws {
        let layer = try MixtureOfExperts(gate: tensor([Float](repeating: 0, count: 5 * D), [5, D]),
                                         experts: (0..<5).map { _ in
                                             (tensor(randomRows(4 * D, seed: 1), [4, D]), tensor(randomRows(D * 4, seed: 2), [D, 4]),
                                              tensor(randomRows(4 * D, seed: 3), [4, D])) })
        let x = tensor(randomRows(3 * D, seed: 4), [3, D])
        for renormalize in [false, true] {
            let (_, r) = try layer.forward(x, config: try layer.config(topK: 3, renormalize: renormalize))
            XCTAssertEqual(r.expertIndices, [0, 1, 2, 0, 1, 2, 0, 1, 2])
            for w in r.routingWeights { XCTAssertEqual(w, renormalize ? 1 / 3 : 0.2, accuracy: 1e-7) }
        }
        // Experts 1 and 3 share the largest logit: 1 first, then 3.
        var gate = [Float](repeating: 0, count: 5 * D)
        for d in 0..<D { gate[1 * D + d] = 1; gate[3 * D + d] = 1; gate[4 * D + d] = -1 }
        let tied = try MixtureOfExperts(gate: tensor(gate, [5, D]), experts: (0..<5).map { e in (layer.w1(e), layer.w2(e), layer.w3(e)) })
        let ones = tensor([Float](repeating: 0.5, count: 2 * D), [2, D])
        let (_, r) = try tied.forward(ones, config: try tied.config(topK: 3, renormalize: false))
        XCTAssertEqual(r.expertIndices, [1, 3, 0, 1, 3, 0])
    }

    // MARK: Capacity

    func testCapacityDropsOverflowSlotsAndCountsThem() throws {
        let layer = try MixtureOfExperts.random(hidden: D, expertSizes: heterogeneous, seed: 5)
        let ref = Float64MoE(layer)
        for (T, k, factor) in [(33, 2, 0.5), (7, 1, 0.6), (33, 5, 0.3)] {
            let xf = randomRows(T * D, seed: 200 + UInt64(T))
            let xd = xf.map(Double.init)
            let config = try layer.config(topK: k, renormalize: true, capacityFactor: factor)
            let capacity = Int((factor * Double(T * k) / Double(heterogeneous.count)).rounded(.up))
            XCTAssertEqual(config.capacity(tokens: T), capacity)
            let (out, r) = try layer.forward(tensor(xf, [T, D]), config: config)
            let routing = ref.route(xd, tokens: T, k: k, capacity: capacity)
            let dropped = routing.kept.flatMap { $0 }.filter { !$0 }.count
            XCTAssertGreaterThan(dropped, 0, "the case must overflow")
            XCTAssertEqual(r.droppedSlots, dropped)
            XCTAssertEqual(r.capacity, capacity)
            XCTAssertEqual(r.computedSlots, T * k - dropped)
            XCTAssertEqual(r.selectedTokenCounts, routing.selected)
            XCTAssertEqual(r.expertTokenCounts, routing.selected.map { min($0, capacity) })
            for t in 0..<T { for j in 0..<k { XCTAssertEqual(r.isDropped(token: t, choice: j), !routing.kept[t][j], "token \(t) choice \(j)") } }
            XCTAssertEqual(r.expertFlops, zip(r.expertTokenCounts, heterogeneous).reduce(0) { $0 + $1.0 * 6 * D * $1.1 })
            XCTAssertLessThan(relativeError(out.scalars, ref.forward(xd, tokens: T, renormalize: true, routing: routing)), forwardTolerance)
        }
    }

    /// Every token prefers expert 0: the first `capacity` tokens keep it, the rest output zeros.
    func testDroppedTokensOutputZeros() throws {
        var gate = [Float](repeating: 0, count: 4 * D)
        for d in 0..<D { gate[d] = 2 }
        let base = try MixtureOfExperts.random(hidden: D, expertSizes: homogeneous, seed: 9)
        let layer = try MixtureOfExperts(gate: tensor(gate, [4, D]), experts: (0..<4).map { (base.w1($0), base.w2($0), base.w3($0)) })
        let T = 7
        let x = tensor(randomRows(T * D, seed: 6).map { abs($0) + 0.1 }, [T, D])
        let (out, r) = try layer.forward(x, config: try layer.config(topK: 1, renormalize: false, capacityFactor: 1))
        XCTAssertEqual(r.capacity, 2)
        XCTAssertEqual(r.droppedSlots, 5)
        XCTAssertEqual(r.expertTokenCounts, [2, 0, 0, 0])
        XCTAssertEqual(r.selectedTokenCounts, [7, 0, 0, 0])
        let o = out.scalars
        for t in 0..<T {
            let row = o[(t * D)..<((t + 1) * D)]
            if t < 2 { XCTAssertTrue(row.contains { $0 != 0 }, "token \(t) is computed") }
            else { XCTAssertTrue(row.allSatisfy { $0 == 0 }, "token \(t) is dropped") }
        }
    }

    // MARK: Gradients

    struct GradientCase {
        var sizes: [Int], T: Int, k: Int, renormalize: Bool, capacity: Double?, lb: Float, z: Float
    }

    func checkGradients(_ c: GradientCase, seed: UInt64, zeroOutputGradient: Bool = false, file: StaticString = #filePath,
                        line: UInt = #line) throws {
        let layer = try MixtureOfExperts.random(hidden: D, expertSizes: c.sizes, seed: seed)
        var ref = Float64MoE(layer)
        let xf = randomRows(c.T * D, seed: seed + 1)
        let dof = zeroOutputGradient ? [Float](repeating: 0, count: c.T * D) : randomRows(c.T * D, seed: seed + 2)
        let xd = xf.map(Double.init), dod = dof.map(Double.init)
        let config = try layer.config(topK: c.k, renormalize: c.renormalize, capacityFactor: c.capacity)
        let (_, r) = try layer.forward(tensor(xf, [c.T, D]), config: config, keepForBackward: true, threads: 2)
        let routing = ref.route(xd, tokens: c.T, k: c.k, capacity: config.capacity(tokens: c.T))
        XCTAssertEqual(r.expertIndices.map(Int.init), routing.choices.flatMap { $0 }, file: file, line: line)
        if c.capacity != nil { XCTAssertGreaterThan(r.droppedSlots, 0, "the case must drop slots", file: file, line: line) }
        let g = try layer.backward(tensor(xf, [c.T, D]), config: config, forward: r, outputGradient: tensor(dof, [c.T, D]),
                                   loadBalancingWeight: c.lb, zLossWeight: c.z, threads: 2)
        let lb = Double(c.lb), z = Double(c.z)
        let dx = ref.inputGradient(xd, tokens: c.T, renormalize: c.renormalize, routing: routing, dout: dod, lb: lb, z: z)
        let dp = ref.parameterGradient(xd, tokens: c.T, renormalize: c.renormalize, routing: routing, dout: dod, lb: lb, z: z)
        let label = "\(c)"
        var worst = relativeError(g.input.scalars, dx)
        defer { print("gradients: worst relative error \(worst) for \(label)") }
        XCTAssertLessThan(relativeError(g.input.scalars, dx), gradientTolerance, "dx " + label, file: file, line: line)
        for entry in layer.layout.entries() {
            let n = entry.shape.reduce(1, *)
            let expected = Array(dp[entry.offset..<(entry.offset + n)])
            let got = g.namedTensors().first { $0.name == entry.name }!.tensor.scalars
            if expected.allSatisfy({ $0 == 0 }) {
                XCTAssertTrue(got.allSatisfy { $0 == 0 }, "\(entry.name) must be zero: " + label, file: file, line: line)
            } else {
                worst = max(worst, relativeError(got, expected))
                XCTAssertLessThan(relativeError(got, expected), gradientTolerance, "\(entry.name) " + label, file: file, line: line)
            }
        }
    }

    func testGradientsMatchFiniteDifferences() throws {
        let cases = [
            GradientCase(sizes: heterogeneous, T: 7, k: 2, renormalize: true, capacity: nil, lb: 0, z: 0),
            GradientCase(sizes: homogeneous, T: 33, k: 1, renormalize: false, capacity: nil, lb: 0, z: 0),
            GradientCase(sizes: heterogeneous, T: 7, k: 5, renormalize: true, capacity: nil, lb: 0, z: 0),
            GradientCase(sizes: heterogeneous, T: 1, k: 2, renormalize: false, capacity: nil, lb: 0, z: 0),
            GradientCase(sizes: homogeneous, T: 33, k: 2, renormalize: true, capacity: nil, lb: 0.3, z: 0.05),
        ]
        for (i, c) in cases.enumerated() { try checkGradients(c, seed: 300 + UInt64(10 * i)) }
    }

    /// Dropped slots pass no gradient to their experts; their weights still count in the renormalisation.
    func testGradientsWithCapacityMatchFiniteDifferences() throws {
        try checkGradients(GradientCase(sizes: heterogeneous, T: 33, k: 2, renormalize: true, capacity: 0.5, lb: 0, z: 0), seed: 400)
        try checkGradients(GradientCase(sizes: heterogeneous, T: 33, k: 2, renormalize: false, capacity: 0.6, lb: 0.2, z: 0.1), seed: 410)
    }

    /// The auxiliary losses alone (zero output gradient): their gradient reaches the gate and x
    /// through the router, and the experts get none.
    func testAuxiliaryLossGradientsReachTheGate() throws {
        try checkGradients(GradientCase(sizes: heterogeneous, T: 33, k: 2, renormalize: true, capacity: nil, lb: 1, z: 0),
                           seed: 500, zeroOutputGradient: true)
        try checkGradients(GradientCase(sizes: heterogeneous, T: 7, k: 1, renormalize: false, capacity: nil, lb: 0, z: 1),
                           seed: 510, zeroOutputGradient: true)
    }

    /// The backward adds into the buffers it is given.
    func testBackwardAccumulates() throws {
        let layer = try MixtureOfExperts.random(hidden: D, expertSizes: heterogeneous, seed: 600)
        let T = 33
        let x = tensor(randomRows(T * D, seed: 601), [T, D]), dout = tensor(randomRows(T * D, seed: 602), [T, D])
        let config = try layer.config(topK: 2, renormalize: true)
        let (_, r) = try layer.forward(x, config: config, keepForBackward: true)
        let once = try layer.backward(x, config: config, forward: r, outputGradient: dout, loadBalancingWeight: 0.1, zLossWeight: 0.1)
        var dx = [Float](repeating: 1, count: T * D), dp = [Float](repeating: 1, count: layer.layout.count)
        try layer.withWeights { w in
            try x.withUnsafePointer { px in
                try dout.withUnsafePointer { pd in
                    try dp.withUnsafeMutableBufferPointer { g in
                        _ = try moeBackward(config, weights: w, x: px, tokens: T, forward: r, outputGradient: pd, inputGradient: &dx,
                                            gradients: layer.layout.gradients(g.baseAddress!), loadBalancingWeight: 0.1, zLossWeight: 0.1)
                    }
                }
            }
        }
        XCTAssertLessThan(relativeError(dx, once.input.scalars.map { Double($0) + 1 }), 1e-6)
        XCTAssertLessThan(relativeError(dp, once.parameters.scalars.map { Double($0) + 1 }), 1e-6)
    }

    // MARK: Determinism

    func testSameResultsForOneAndTwoThreads() throws {
        // Several row blocks per expert (T·k/E > 256) and several weight-gradient blocks (F_e > 128).
        let sizes = [16, 300, 24, 140, 8, 32, 200, 24], D = 32, T = 1500
        let layer = try MixtureOfExperts.random(hidden: D, expertSizes: sizes, seed: 700)
        let x = tensor(randomRows(T * D, seed: 701), [T, D]), dout = tensor(randomRows(T * D, seed: 702), [T, D])
        for capacity in [nil, 0.9] as [Double?] {
            let config = try layer.config(topK: 2, renormalize: true, capacityFactor: capacity)
            var outputs = [[Float]](), grads = [[Float]]()
            for threads in [1, 2, 3] {
                let (out, r) = try layer.forward(x, config: config, keepForBackward: true, threads: threads)
                if capacity != nil { XCTAssertGreaterThan(r.droppedSlots, 0) }
                XCTAssertGreaterThan(r.expertTokenCounts.max()!, 256)
                let g = try layer.backward(x, config: config, forward: r, outputGradient: dout, loadBalancingWeight: 0.01,
                                           zLossWeight: 0.001, threads: threads)
                outputs.append(out.scalars)
                grads.append(g.input.scalars + g.parameters.scalars)
            }
            XCTAssertEqual(outputs[0], outputs[1], "forward, 1 vs 2 threads")
            XCTAssertEqual(outputs[0], outputs[2], "forward, 1 vs 3 threads")
            XCTAssertTrue(grads[0] == grads[1], "backward, 1 vs 2 threads")
            XCTAssertTrue(grads[0] == grads[2], "backward, 1 vs 3 threads")
        }
    }

    /// Scratch reused from the workspace cache (here full of NaN) gives what fresh memory gives:
    /// no call relies on zero-filled or earlier contents.
    func testReusedScratchGivesTheSameResults() throws {
        let sizes = [16, 300, 24, 140, 8, 32, 200, 24], D = 64, T = 2000
        let layer = try MixtureOfExperts.random(hidden: D, expertSizes: sizes, seed: 750)
        let x = tensor(randomRows(T * D, seed: 751), [T, D]), dout = tensor(randomRows(T * D, seed: 752), [T, D])
        let saved = MoEWorkspace.maximumBytes
        defer { MoEWorkspace.maximumBytes = saved }
        func run() throws -> [Float] {
            var all = [Float]()
            for capacity in [nil, 0.9] as [Double?] {
                let config = try layer.config(topK: 2, renormalize: capacity == nil, capacityFactor: capacity)
                let (out, r) = try layer.forward(x, config: config, keepForBackward: true, threads: 2)
                let g = try layer.backward(x, config: config, forward: r, outputGradient: dout, loadBalancingWeight: 0.01, threads: 2)
                all += out.scalars + g.input.scalars + g.parameters.scalars
            }
            return all
        }
        MoEWorkspace.maximumBytes = 0
        XCTAssertEqual(MoEWorkspace.cachedBytes, 0)
        let fresh = try run()
        MoEWorkspace.maximumBytes = 1 << 30
        for size in [1 << 20, 2 << 20, 4 << 20, 8 << 20, 16 << 20, 32 << 20] {
            let b = try MoEWorkspace.take(bytes: size)
            let f = b.base.bindMemory(to: Float.self, capacity: b.capacity / 4)
            f.update(repeating: .nan, count: b.capacity / 4)
            MoEWorkspace.give(b)
        }
        XCTAssertGreaterThanOrEqual(MoEWorkspace.cachedBytes, 63 << 20)
        let reused = try run()
        XCTAssertTrue(fresh == reused, "results from reused scratch differ")
        XCTAssertGreaterThan(MoEWorkspace.cachedBytes, 0)
        MoEWorkspace.releaseCache()
        XCTAssertEqual(MoEWorkspace.cachedBytes, 0)
    }

    // MARK: Edge cases and errors

    func testZeroTokens() throws {
        let layer = try MixtureOfExperts.random(hidden: D, expertSizes: homogeneous, seed: 800)
        let x = try Tensor(zeros: [0, D])
        let config = try layer.config(topK: 2, renormalize: true)
        let (out, r) = try layer.forward(x, config: config, keepForBackward: true)
        XCTAssertEqual(out.shape, [0, D])
        XCTAssertEqual(r.expertTokenCounts, [0, 0, 0, 0])
        XCTAssertEqual(r.loadBalancingLoss, 0)
        let g = try layer.backward(x, config: config, forward: r, outputGradient: x, loadBalancingWeight: 1, zLossWeight: 1)
        XCTAssertTrue(g.parameters.scalars.allSatisfy { $0 == 0 })
    }

    func testInvalidConfigurationsThrowTypedErrors() {
        func error(_ body: () throws -> Any) -> MoEError? {
            do { _ = try body(); return nil } catch { return error as? MoEError }
        }
        XCTAssertEqual(error { try MoEConfig(hidden: 4, expertSizes: [8, 8], topK: 0, renormalize: true) }, .invalidTopK(0, experts: 2))
        XCTAssertEqual(error { try MoEConfig(hidden: 4, expertSizes: [8, 8], topK: 3, renormalize: true) }, .invalidTopK(3, experts: 2))
        XCTAssertEqual(error { try MoEConfig(hidden: 4, expertSizes: [], topK: 1, renormalize: true) }, .noExperts)
        XCTAssertEqual(error { try MoEConfig(hidden: 0, expertSizes: [8], topK: 1, renormalize: true) }, .invalidHidden(0))
        XCTAssertEqual(error { try MoEConfig(hidden: 4, expertSizes: [8, 0], topK: 1, renormalize: true) }, .invalidExpertSize(expert: 1, size: 0))
        for c in [0, -1, .nan, .infinity] as [Double] {
            XCTAssertEqual(error { try MoEConfig(hidden: 4, expertSizes: [8], topK: 1, renormalize: true, capacityFactor: c) }?.description,
                           MoEError.invalidCapacityFactor(c).description)
        }
        XCTAssertNil(error { try MoEConfig(hidden: 4, expertSizes: [8, 3], topK: 2, renormalize: false, capacityFactor: 1.25) })
    }

    func testBadCallsThrowTypedErrors() throws {
        let layer = try MixtureOfExperts.random(hidden: D, expertSizes: homogeneous, seed: 900)
        let config = try layer.config(topK: 2, renormalize: true)
        var xv = randomRows(5 * D, seed: 901)
        xv[13] = .nan
        XCTAssertThrowsError(try layer.forward(tensor(xv, [5, D]), config: config)) { XCTAssertEqual($0 as? MoEError, .nonFinite(name: "x", index: 13)) }
        xv[13] = 0
        let x = tensor(xv, [5, D])
        XCTAssertThrowsError(try layer.forward(tensor(randomRows(5 * 7, seed: 1), [5, 7]), config: config)) {
            XCTAssertEqual($0 as? MoEError, .shapeMismatch(name: "x", shape: [5, 7], expected: "[T, \(D)]"))
        }
        let other = try MoEConfig(hidden: D, expertSizes: [8, 8, 8], topK: 1, renormalize: true)
        XCTAssertThrowsError(try layer.forward(x, config: other)) { XCTAssertNotNil($0 as? MoEError) }
        XCTAssertThrowsError(try layer.forward(x, config: config, threads: 0)) { XCTAssertEqual($0 as? MoEError, .invalidThreadCount(0)) }
        // Raw pointers for the wrong number of experts.
        try layer.withWeights { w in
            var short = w
            short.w2.removeLast()
            var out = [Float](repeating: 0, count: 5 * D)
            XCTAssertThrowsError(try moeForward(config, weights: short, x: xv, tokens: 5, output: &out, keepForBackward: false)) {
                XCTAssertEqual($0 as? MoEError, .expertCountMismatch(expected: 4, got: 3))
            }
        }
        // Backward: without kept activations, for another configuration or token count, non-finite dout.
        let (_, plain) = try layer.forward(x, config: config)
        XCTAssertThrowsError(try layer.backward(x, config: config, forward: plain, outputGradient: x)) {
            XCTAssertEqual($0 as? MoEError, .forwardNotKept)
        }
        let (_, kept) = try layer.forward(x, config: config, keepForBackward: true)
        XCTAssertThrowsError(try layer.backward(x, config: try layer.config(topK: 1, renormalize: true), forward: kept, outputGradient: x)) {
            XCTAssertEqual($0 as? MoEError, .forwardConfigurationMismatch)
        }
        let x4 = try x.slice(axis: 0, 0..<4)
        XCTAssertThrowsError(try layer.backward(x4, config: config, forward: kept, outputGradient: x4)) {
            XCTAssertEqual($0 as? MoEError, .forwardTokenMismatch(saved: 5, given: 4))
        }
        var dv = [Float](repeating: 1, count: 5 * D)
        dv[7] = .infinity
        XCTAssertThrowsError(try layer.backward(x, config: config, forward: kept, outputGradient: tensor(dv, [5, D]))) {
            XCTAssertEqual($0 as? MoEError, .nonFinite(name: "output gradient", index: 7))
        }
        XCTAssertThrowsError(try layer.backward(x, config: config, forward: kept, outputGradient: x4)) {
            guard case .shapeMismatch = $0 as? MoEError else { return XCTFail("\($0)") }
        }
    }

    // MARK: Weights

    func testWeightArchivesAreCheckedByName() throws {
        let layer = try MixtureOfExperts.random(hidden: D, expertSizes: heterogeneous, seed: 1000)
        let good = layer.namedTensors()
        func load(_ tensors: [(name: String, tensor: Tensor)], prefix: String = "") throws -> MixtureOfExperts {
            try MixtureOfExperts(archive: try SafeTensors.read(bytes: try SafeTensors.encode(tensors)), prefix: prefix)
        }
        func replacing(_ name: String, with t: Tensor?) -> [(name: String, tensor: Tensor)] {
            good.compactMap { $0.name == name ? t.map { (name, $0) } : $0 }
        }
        func expect(_ tensors: [(name: String, tensor: Tensor)], _ expected: MoEError, line: UInt = #line) {
            XCTAssertThrowsError(try load(tensors), line: line) { XCTAssertEqual($0 as? MoEError, expected, line: line) }
        }
        let loaded = try load(good)
        XCTAssertEqual(loaded.expertSizes, heterogeneous)
        XCTAssertEqual(loaded.parameters.scalars, layer.parameters.scalars)

        expect(replacing("experts.1.w2.weight", with: nil), .missingTensor(name: "experts.1.w2.weight"))
        expect(replacing("gate.weight", with: nil), .missingTensor(name: "gate.weight"))
        expect(replacing("experts.2.w1.weight", with: tensor(randomRows(5 * (D + 1), seed: 1), [5, D + 1])),
               .misshapenTensor(name: "experts.2.w1.weight", shape: [5, D + 1], expected: "[F_e, \(D)] with F_e ≥ 1 (D = \(D) from the gate)"))
        expect(replacing("experts.2.w3.weight", with: tensor(randomRows(6 * D, seed: 1), [6, D])),
               .misshapenTensor(name: "experts.2.w3.weight", shape: [6, D], expected: "[5, \(D)] (as w1)"))
        expect(replacing("experts.0.w2.weight", with: layer.w1(0)),
               .misshapenTensor(name: "experts.0.w2.weight", shape: [3, D], expected: "[\(D), 3] (w1 transposed)"))
        expect(replacing("gate.weight", with: tensor(randomRows(5 * D, seed: 1), [5 * D])),
               .misshapenTensor(name: "gate.weight", shape: [5 * D], expected: "[E, D] with E, D ≥ 1"))
        expect(good + [("experts.5.w1.weight", layer.w1(0))], .unexpectedTensor(name: "experts.5.w1.weight"))
        expect(good + [("router.bias", layer.w1(0))], .unexpectedTensor(name: "router.bias"))
        var w = layer.w2(4).scalars
        w[17] = .nan
        expect(replacing("experts.4.w2.weight", with: tensor(w, [D, 7])), .nonFinite(name: "experts.4.w2.weight", index: 17))

        // A layer inside a larger checkpoint: only the names under the prefix belong to it.
        let prefix = "model.layers.0.block_sparse_moe."
        let inModel = try load(layer.namedTensors(prefix: prefix) + [("model.embed_tokens.weight", layer.gate)], prefix: prefix)
        XCTAssertEqual(inModel.parameters.scalars, layer.parameters.scalars)

        // Files: a round trip, and a truncated file refused by the reader.
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("moe-\(getpid()).safetensors").path
        defer { unlink(path) }
        try layer.save(to: path)
        XCTAssertEqual(try MixtureOfExperts(contentsOf: path).parameters.scalars, layer.parameters.scalars)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try MixtureOfExperts(contentsOf: path)) { XCTAssertTrue($0 is SafeTensorsError, "\($0)") }
    }
}

/// The workspace's cached buffers are part of the memory budget: counted against a fixed budget,
/// and given back when an allocation needs their room.
final class MoEWorkspaceBudgetTests: XCTestCase {
    func testCachedBuffersCountAgainstTheBudget() throws {
        let saved = MemoryBudget.limitBytes
        defer { MemoryBudget.limitBytes = saved; MoEWorkspace.releaseCache() }
        MoEWorkspace.releaseCache()
        MemoryBudget.limitBytes = 512 << 20
        // A finished call's 300 MiB scratch (never touched), kept by the cache.
        MoEWorkspace.give(try MoEWorkspace.take(bytes: 300 << 20))
        XCTAssertGreaterThanOrEqual(MoEWorkspace.cachedBytes, 300 << 20)
        XCTAssertEqual(MemoryBudget.availableBytes, (512 << 20) - MoEWorkspace.cachedBytes)
        // 300 MiB more fit the 512 MiB budget only once the cache gave its 300 back.
        XCTAssertNoThrow(try MemoryBudget.check(300 << 20))
        XCTAssertEqual(MoEWorkspace.cachedBytes, 0)
        XCTAssertThrowsError(try MemoryBudget.check(600 << 20))
    }
}
