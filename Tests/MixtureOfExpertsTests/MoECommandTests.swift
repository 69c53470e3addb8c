import ArgumentParser
import AttentionTensor
import AttnCommands
import Foundation
import MixtureOfExperts
import XCTest

/// `attn moe`: its files match the library's results, and bad input is refused without output.
final class MoECommandTests: XCTestCase {
    var dir = ""
    let D = 8

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("moe-command-\(getpid())-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    func path(_ name: String) -> String { dir + "/" + name }

    func run(_ arguments: [String]) throws {
        var command = try Attn.parseAsRoot(["moe"] + arguments)
        try command.run()
    }

    func testOutputsMatchTheLibrary() throws {
        let layer = try MixtureOfExperts.random(hidden: D, expertSizes: [4, 16, 8], seed: 1)
        try layer.save(to: path("moe.safetensors"))
        let x = try Tensor.randomNormal([9, D], seed: 2), dout = try Tensor.randomNormal([9, D], seed: 3)
        try Numpy.write(x, to: path("x.npy"))
        try Numpy.write(dout, to: path("dout.npy"))
        try run(["--x", path("x.npy"), "--weights", path("moe.safetensors"), "--top-k", "2", "--renormalize", "--capacity-factor", "0.7",
                 "-o", path("out.npy"), "--dout", path("dout.npy"), "--dx", path("dx.npy"), "--grads", path("grads.safetensors"),
                 "--load-balancing-weight", "0.5", "--threads", "2"])
        let config = try layer.config(topK: 2, renormalize: true, capacityFactor: 0.7)
        let (out, r) = try layer.forward(x, config: config, keepForBackward: true, threads: 2)
        XCTAssertGreaterThan(r.droppedSlots, 0)
        let g = try layer.backward(x, config: config, forward: r, outputGradient: dout, loadBalancingWeight: 0.5, threads: 2)
        XCTAssertEqual(try Numpy.readTensor(path("out.npy")).scalars, out.scalars)
        XCTAssertEqual(try Numpy.readTensor(path("dx.npy")).scalars, g.input.scalars)
        let grads = try SafeTensors.read(path("grads.safetensors"))
        XCTAssertEqual(grads.names.sorted(), layer.namedTensors().map(\.name).sorted())
        for (name, t) in g.namedTensors() {
            let saved = try grads.tensor(name)
            XCTAssertEqual(saved.shape, t.shape, name)
            XCTAssertEqual(saved.scalars, t.scalars, name)
        }
    }

    func testBadInputIsRefusedWithoutOutput() throws {
        let layer = try MixtureOfExperts.random(hidden: D, expertSizes: [4, 16, 8], seed: 1)
        try layer.save(to: path("moe.safetensors"))
        var named = layer.namedTensors()
        named.removeAll { $0.name == "experts.2.w3.weight" }
        try SafeTensors.write(named, to: path("missing.safetensors"))
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path("moe.safetensors")))
        try bytes.prefix(bytes.count - 10).write(to: URL(fileURLWithPath: path("truncated.safetensors")))
        try Numpy.write(try Tensor.randomNormal([5, D], seed: 2), to: path("x.npy"))
        try Numpy.write(try Tensor.randomNormal([5, D + 1], seed: 2), to: path("wide.npy"))
        var nan = try Tensor.randomNormal([5, D], seed: 2)
        nan[2, 3] = .nan
        try Numpy.write(nan, to: path("nan.npy"))
        try Numpy.write(try Tensor.randomNormal([4, D], seed: 3), to: path("short.npy"))

        let outputs = ["-o", path("out.npy"), "--dout", path("x.npy"), "--dx", path("dx.npy"), "--grads", path("g.safetensors")]
        func refused(_ arguments: [String], _ why: String, line: UInt = #line) {
            XCTAssertThrowsError(try run(arguments), why, line: line)
            for f in ["out.npy", "dx.npy", "g.safetensors"] {
                XCTAssertFalse(FileManager.default.fileExists(atPath: path(f)), "\(why): \(f) written", line: line)
            }
            let left = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
            XCTAssertFalse(left.contains { $0.contains("partial") }, "\(why): temporary files left: \(left)", line: line)
        }
        let weights = ["--weights", path("moe.safetensors")]
        refused(["--x", path("x.npy"), "--top-k", "4"] + weights + outputs, "top-k above E")
        refused(["--x", path("x.npy"), "--top-k", "0"] + weights + outputs, "top-k 0")
        refused(["--x", path("nan.npy"), "--top-k", "2"] + weights + outputs, "NaN in x")
        refused(["--x", path("wide.npy"), "--top-k", "2"] + weights + outputs, "x of the wrong width")
        refused(["--x", path("x.npy"), "--top-k", "2", "--weights", path("missing.safetensors")] + outputs, "missing expert weight")
        refused(["--x", path("x.npy"), "--top-k", "2", "--weights", path("truncated.safetensors")] + outputs, "truncated safetensors")
        refused(["--x", path("x.npy"), "--top-k", "2", "--weights", path("none.safetensors")] + outputs, "no weights file")
        refused(["--x", path("x.npy"), "--top-k", "2"] + weights + ["-o", path("out.npy"), "--dout", path("short.npy"), "--dx", path("dx.npy"),
                                                                   "--grads", path("g.safetensors")], "dout of another shape")
        refused(["--x", path("x.npy"), "--top-k", "2"] + weights + ["-o", path("out.npy"), "--dout", path("nan.npy"), "--dx", path("dx.npy"),
                                                                   "--grads", path("g.safetensors")], "NaN in dout")
        refused(["--x", path("x.npy"), "--top-k", "2"] + weights + ["-o", path("out.npy"), "--dout", path("x.npy"), "--dx", path("dx.npy")],
                "--dout without --grads")
        refused(["--x", path("x.npy"), "--top-k", "2"] + weights + ["-o", path("out.npy"), "--dout", path("x.npy"), "--grads", path("g.safetensors")],
                "--dout without --dx")
        refused(["--x", path("x.npy"), "--top-k", "2"] + weights + ["-o", path("out.npy"), "--dx", path("dx.npy"), "--grads", path("g.safetensors")],
                "--dx and --grads without --dout")
        refused(["--x", path("x.npy"), "--top-k", "2", "--capacity-factor", "0"] + weights + outputs, "capacity factor 0")
        refused(["--x", path("x.npy"), "--top-k", "2"] + weights + ["-o", path("out.npy"), "--dout", path("x.npy"), "--dx", path("out.npy"),
                                                                   "--grads", path("g.safetensors")], "the same output twice")
    }
}
