import AttnServerCore
import ChatTemplate
import Foundation
import LongContextModel
import XCTest

/// `/v1/chat/completions` bodies parsed without a server: a template that refuses the messages is
/// a `chat_template_error` naming the template's own reason; a model without a template is
/// `no_chat_template`.
final class ChatRequestTests: XCTestCase {
    let body = Array(#"{"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]}"#.utf8)

    func code(_ render: ([ChatMessage]) throws -> String) -> (code: String?, message: String, param: String?) {
        do {
            _ = try CompletionRequest.parse(body, kind: .chat, render: render)
            return (nil, "", nil)
        } catch {
            return (error.code, error.message, error.param)
        }
    }

    func testARefusingTemplateIsAChatTemplateError() throws {
        let template = try ChatTemplate("{% if messages[0].role == messages[1].role %}{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}")
        let r = code { messages in try template.render(messages: messages, addGenerationPrompt: true) }
        XCTAssertEqual(r.code, "chat_template_error")
        XCTAssertEqual(r.param, "messages")
        XCTAssertTrue(r.message.contains("Conversation roles must alternate"), r.message)
    }

    func testNoTemplateIsNoChatTemplate() {
        let r = code { _ in throw ModelError.noChatTemplate(model: "base") }
        XCTAssertEqual(r.code, "no_chat_template")
    }

    func testAWorkingTemplateParses() throws {
        let r = code { m in m.map(\.content).joined(separator: "|") }
        XCTAssertNil(r.code, r.message)
    }
}
