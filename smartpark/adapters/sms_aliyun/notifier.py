"""Aliyun SMS (Dysmsapi 2017-05-25 SendSms) -> the Notifier port, on the vendor's own SDK.

``alibabacloud-dysmsapi20170525`` 4.6.0 signs SendSms with the V3 scheme (ACS3-HMAC-SHA256) and sends it as a POST
with the parameters in the query string. Business errors such as flow control come back with HTTP 200 and a
``Code`` other than ``"OK"``; signature and gateway errors come back as HTTP 4xx/5xx, which the SDK raises as
``ClientException`` / ``ServerException``; network errors and timeouts are raised wrapped in
``UnretryableException``. Every outcome is mapped to a :class:`DeliveryResult` here -- ``send`` never raises.

SendSms is not idempotent, so the SDK's own retries stay off: one ``send`` is at most one HTTP request. A read
timeout therefore leaves the outcome unknown (the SMS may have gone out); it is reported FAILED with a detail that
says so, and the outbox decides whether to try again.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from alibabacloud_dysmsapi20170525 import models as sms_models
from alibabacloud_dysmsapi20170525.client import Client
from alibabacloud_tea_openapi.utils_models import Config as SdkConfig
from darabonba.exceptions import ResponseException, UnretryableException
from darabonba.runtime import RuntimeOptions

from smartpark.ports.notifier import DeliveryResult, DeliveryStatus, Message

__all__ = ["PERMANENT_CODES", "TEMPORARY_CODES", "AliyunSmsNotifier", "classify", "mask_phone"]

log = logging.getLogger(__name__)

SENT, REJECTED, FAILED = DeliveryStatus.SENT, DeliveryStatus.REJECTED, DeliveryStatus.FAILED

#: Codes that mean "try again later": flow control, throttling, Aliyun-side faults, one-off signature problems.
TEMPORARY_CODES: dict[str, str] = {
    "isv.BUSINESS_LIMIT_CONTROL": "flow control for this number (per minute/hour/day); retry later",
    "isv.DAY_LIMIT_CONTROL": "the daily sending limit is reached; retry tomorrow",
    "isv.MONTH_LIMIT_CONTROL": "the monthly sending limit is reached",
    "BUSINESS_LIMIT_CONTROL_MINUTE": "per-minute flow control",
    "isv.BUSINESS_LIMIT_HOUR": "per-hour flow control",
    "isv.BUSINESS_LIMIT_DAY": "per-day flow control",
    "BUSINESS_LIMIT_CONTROL_PHONE": "per-number flow control",
    "isp.SYSTEM_ERROR": "Aliyun system error",
    "isp.GATEWAY_ERROR": "Aliyun gateway error",
    "isp.UNKNOWN": "Aliyun unknown error",
    "Throttling": "API throttling",
    "Throttling.User": "API throttling for this account",
    "Throttling.Api": "API throttling",
    "ServiceUnavailable": "Aliyun service unavailable",
    "InternalError": "Aliyun internal error",
    "SignatureNonceUsed": "the request nonce was seen before; a new request gets a new one",
    "InvalidTimeStamp.Expired": "our clock is more than 15 minutes off Aliyun's: check the host's time (NTP)",
}

#: Codes that mean "this message will never go through as it is": the recipient, the content or our account.
PERMANENT_CODES: dict[str, str] = {
    # the recipient
    "isv.MOBILE_NUMBER_ILLEGAL": "the phone number is not valid",
    "isv.MOBILE_COUNT_OVER_LIMIT": "too many phone numbers",
    "isv.CUSTOMER_REFUSED": "the recipient has unsubscribed",
    "isv.DOMESTIC_NUMBER_NOT_SUPPORTED": "this template cannot send to mainland numbers",
    # the content: template, signature, parameters
    "isv.TEMPLATE_MISSING_PARAMETERS": "the template needs a parameter the message does not have",
    "isv.INVALID_PARAMETERS": "a parameter is invalid",
    "isv.INVALID_JSON_PARAM": "TemplateParam is not a JSON object of strings",
    "isv.PARAM_LENGTH_LIMIT": "a parameter value is too long (35 characters at most)",
    "isv.PARAM_NOT_SUPPORT_URL": "a parameter may not contain a URL",
    "isv.TEMPLATE_PARAMS_ILLEGAL": "a parameter value is not allowed",
    "isv.BLACK_KEY_CONTROL_LIMIT": "a parameter contains a blocked keyword",
    "isv.SMS_CONTENT_ILLEGAL": "the content is not allowed",
    "isv.SMS_TEMPLATE_ILLEGAL": "the TemplateCode is unknown or not approved: check [plugins.sms_aliyun] templates",
    "isv.SMS_SIGNATURE_ILLEGAL": "the SignName is unknown or not approved: check [plugins.sms_aliyun] sign_name",
    "isv.SMS_SIGN_ILLEGAL": "the SignName is not allowed",
    "isv.SMS_SIGNATURE_SCENE_ILLEGAL": "the signature cannot be used with this template type",
    "isv.EXTEND_CODE_ERROR": "the extension code is used by another signature",
    # the account (operator action needed; the message is not retried -- see README)
    "isv.AMOUNT_NOT_ENOUGH": "the Aliyun account balance is insufficient: top it up",
    "isv.OUT_OF_SERVICE": "the Aliyun account is suspended (balance): top it up",
    "isv.PRODUCT_UN_SUBSCRIPT": "SMS is not activated for this Aliyun account",
    "isv.PRODUCT_UNSUBSCRIBE": "SMS is not activated for this Aliyun account",
    "isv.ACCOUNT_NOT_EXISTS": "the Aliyun account does not exist",
    "isv.ACCOUNT_ABNORMAL": "the Aliyun account is abnormal",
    "isv.DENY_IP_RANGE": "this server's IP address is not allowed to send",
    "isv.SECURITY_FROZEN_ACCOUNT": "the Aliyun account is frozen",
    "isp.RAM_PERMISSION_DENY": "the AccessKey's RAM user may not call SendSms",
    "SignatureDoesNotMatch": "Aliyun refused the request signature: access_key_secret is wrong for access_key_id",
    "IncompleteSignature": "Aliyun refused the request signature",
    "InvalidAccessKeyId.NotFound": "access_key_id is unknown to Aliyun",
    "InvalidAccessKeyId.Inactive": "access_key_id is disabled",
    "Forbidden.RAM": "the AccessKey's RAM user may not call SendSms",
    "Forbidden.AccessKeyDisabled": "access_key_id is disabled",
    "InvalidTimeStamp.Format": "the SDK sent a malformed timestamp",
    "InvalidAction.NotFound": "the endpoint does not offer SendSms: check [plugins.sms_aliyun] endpoint",
    "InvalidVersion": "the endpoint does not offer Dysmsapi 2017-05-25: check [plugins.sms_aliyun] endpoint",
}

#: Codes that point at our settings or account, not at one message: logged at ERROR for the operator.
OPERATOR_CODES = frozenset({
    "isv.SMS_TEMPLATE_ILLEGAL", "isv.SMS_SIGNATURE_ILLEGAL", "isv.AMOUNT_NOT_ENOUGH", "isv.OUT_OF_SERVICE",
    "isv.PRODUCT_UN_SUBSCRIPT", "isv.PRODUCT_UNSUBSCRIBE", "isv.ACCOUNT_NOT_EXISTS", "isv.ACCOUNT_ABNORMAL",
    "isv.DENY_IP_RANGE", "isv.SECURITY_FROZEN_ACCOUNT", "isp.RAM_PERMISSION_DENY", "SignatureDoesNotMatch",
    "IncompleteSignature", "InvalidAccessKeyId.NotFound", "InvalidAccessKeyId.Inactive", "Forbidden.RAM",
    "Forbidden.AccessKeyDisabled", "InvalidAction.NotFound", "InvalidVersion", "InvalidTimeStamp.Expired",
    "isv.DAY_LIMIT_CONTROL", "isv.MONTH_LIMIT_CONTROL",
})

_PHONE = re.compile(r"(?:\+86|0086|86|\+)?(\d{11})")
_OUT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_QUERY = re.compile(r"\?[^\s'\"]*")
_BEIJING = ZoneInfo("Asia/Shanghai")  # Aliyun's SendDate is a Beijing date
_LOOKUP_PAGE_SIZE = 50
_LOOKUP_MAX_PAGES = 20


def mask_phone(phone: str) -> str:
    m = _PHONE.fullmatch(phone)
    digits = m.group(1) if m else phone
    return f"{digits[:3]}****{digits[-4:]}" if len(digits) >= 8 else "*" * len(digits)


def classify(code: str, http_status: int = 200) -> DeliveryStatus:
    """SENT, REJECTED (permanent) or FAILED (temporary) for an Aliyun ``Code`` and HTTP status.

    Known codes follow the tables above. Unknown ones: ``Throttling*``, ``isp.*`` and anything with ``LIMIT_CONTROL``
    are temporary, other ``isv.*`` codes permanent (they describe the request or the account); otherwise HTTP 5xx
    is temporary, HTTP 4xx permanent, and an unknown code with HTTP 200 temporary (the outbox retries a bounded
    number of times, and the vendor code is kept for the operator).
    """
    if code == "OK":
        return SENT
    if code in TEMPORARY_CODES:
        return FAILED
    if code in PERMANENT_CODES:
        return REJECTED
    if code.startswith(("Throttling", "isp.", "ServiceUnavailable", "InternalError")) or "LIMIT_CONTROL" in code:
        return FAILED
    if code.startswith("isv."):
        return REJECTED
    if 400 <= http_status < 500:
        return REJECTED
    return FAILED


class AliyunSmsNotifier:
    """Sends one SMS per :class:`Message` with SendSms; ``Message.template`` is a logical name mapped to a
    TemplateCode by ``templates`` and ``Message.params`` becomes TemplateParam.

    ``send`` is thread-safe and never raises. ``vendor_code`` is Aliyun's ``Code`` whenever Aliyun answered
    (empty when it did not: local refusals, network errors); ``detail`` explains the outcome and carries the
    RequestId for support tickets. ``vendor_message_id`` is the BizId (QuerySendDetails, delivery receipts).
    """

    channel = "sms"

    def __init__(
        self,
        *,
        access_key_id: str,
        access_key_secret: str,
        sign_name: str,
        templates: Mapping[str, str],
        endpoint: str = "dysmsapi.aliyuncs.com",
        protocol: str = "https",
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 5.0,
        name: str = "sms_aliyun",
    ) -> None:
        if not access_key_id or not access_key_secret:
            raise ValueError("access_key_id and access_key_secret are required")
        self.name = name
        self.sign_name = sign_name
        self.templates = dict(templates)
        self.endpoint = endpoint
        connect_ms, read_ms = max(1, int(connect_timeout_s * 1000)), max(1, int(read_timeout_s * 1000))
        self._client = Client(SdkConfig(
            access_key_id=access_key_id,
            access_key_secret=access_key_secret,
            endpoint=endpoint,
            protocol=protocol,
            connect_timeout=connect_ms,
            read_timeout=read_ms,
            retry_options=None,  # no SDK retries: SendSms is not idempotent, the outbox owns retrying
        ))
        self._runtime = RuntimeOptions(autoretry=False, connect_timeout=connect_ms, read_timeout=read_ms)
        #: The longest one ``send`` can take (the outbox worker's claim lease is longer than this).
        self.timeout_seconds = connect_timeout_s + read_timeout_s

    # -- Notifier -----------------------------------------------------------------------------------------------
    def send(self, message: Message) -> DeliveryResult:
        phone = (message.recipient or "").strip() if isinstance(message.recipient, str) else ""
        if not phone:
            return self._local_refusal(message, "the message has no phone number")
        if "," in phone:
            return self._local_refusal(message, "one phone number per message (the recipient contains a comma)")
        template_code = self.templates.get(message.template)
        if template_code is None:
            known = ", ".join(sorted(self.templates)) or "(none)"
            return self._local_refusal(
                message, f"no TemplateCode for template {message.template!r} in [plugins.{self.name}] templates "
                         f"(configured: {known})")
        request = sms_models.SendSmsRequest(
            phone_numbers=phone,
            sign_name=self.sign_name,
            template_code=template_code,
            template_param=self._template_param(message.params),
            out_id=message.id if isinstance(message.id, str) and _OUT_ID.fullmatch(message.id) else None,
        )
        try:
            response = self._client.send_sms_with_options(request, self._runtime)
        except ResponseException as e:  # HTTP 4xx/5xx with an Aliyun error body
            status = getattr(e, "status_code", None) or getattr(e, "statusCode", None) or 0
            return self._vendor_result(message, str(e.code or ""), _vendor_message(e), _request_id(e), int(status))
        except UnretryableException as e:  # network errors, timeouts, unreadable replies
            return self._transport_failure(message, getattr(e, "inner_exception", None) or e)
        except Exception as e:  # noqa: BLE001 - send() reports, it never raises
            log.exception("sms_aliyun: unexpected error sending message %s", message.id)
            return DeliveryResult(status=FAILED, detail=f"unexpected error: {type(e).__name__}: {e}")
        body = response.body
        if body is None or not body.code:
            return DeliveryResult(status=FAILED,
                                  detail=f"Aliyun answered HTTP {response.status_code} without a Code")
        return self._vendor_result(message, body.code, body.message or "", body.request_id or "",
                                   int(response.status_code or 200), biz_id=body.biz_id or "")

    def lookup(self, message: Message) -> DeliveryResult | None:
        """What became of ``message``: QuerySendDetails for its phone number, today and yesterday (Beijing dates),
        matched by ``OutId`` (= ``message.id``, which ``send`` passes).

        ``None``: Aliyun has no such message (it never went out). SENT: Aliyun accepted it (SendStatus 1 waiting
        for the receipt, 3 delivered). REJECTED: accepted but not delivered (SendStatus 2, ``vendor_code`` is the
        ErrCode). FAILED: the answer is unknown now (network, throttling, an error ``Code``): ask again later.
        Never raises.
        """
        phone = (message.recipient or "").strip() if isinstance(message.recipient, str) else ""
        if not phone or not isinstance(message.id, str) or not _OUT_ID.fullmatch(message.id):
            return DeliveryResult(status=FAILED, detail="cannot look up: no phone number or no usable OutId")
        m = _PHONE.fullmatch(phone)
        number = m.group(1) if m else phone
        today = datetime.now(_BEIJING).date()
        for day in (today, today - timedelta(days=1)):
            page = 1
            while page <= _LOOKUP_MAX_PAGES:
                request = sms_models.QuerySendDetailsRequest(phone_number=number, send_date=day.strftime("%Y%m%d"),
                                                             page_size=_LOOKUP_PAGE_SIZE, current_page=page)
                try:
                    response = self._client.query_send_details_with_options(request, self._runtime)
                except ResponseException as e:
                    return DeliveryResult(status=FAILED, vendor_code=str(e.code or ""),
                                          detail=f"QuerySendDetails refused: {e.code}: {_vendor_message(e)}")
                except UnretryableException as e:
                    error = getattr(e, "inner_exception", None) or e
                    text = _QUERY.sub("?<query hidden>", str(getattr(error, "message", None) or error))
                    return DeliveryResult(status=FAILED, detail=f"QuerySendDetails failed: {type(error).__name__}: "
                                                                f"{text}")
                except Exception as e:  # noqa: BLE001 - lookup() reports, it never raises
                    log.exception("sms_aliyun: unexpected error looking up message %s", message.id)
                    return DeliveryResult(status=FAILED, detail=f"unexpected error: {type(e).__name__}: {e}")
                body = response.body
                if body is None or body.code != "OK":
                    code = (body.code if body is not None else "") or ""
                    said = (body.message if body is not None else "") or ""
                    return DeliveryResult(status=FAILED, vendor_code=code, detail=f"QuerySendDetails: {code} {said}")
                dtos = body.sms_send_detail_dtos.sms_send_detail_dto if body.sms_send_detail_dtos else []
                for dto in dtos or []:
                    if dto.out_id == message.id:
                        return _detail_result(message, dto)
                total = int(body.total_count or 0)
                if page * _LOOKUP_PAGE_SIZE >= total or not dtos:
                    break
                page += 1
        log.info("sms_aliyun: message %s to %s: Aliyun has no record of it", message.id, mask_phone(phone))
        return None

    def close(self) -> None:
        """Nothing to release: the SDK pools its HTTP sessions process-wide."""

    def __repr__(self) -> str:
        return f"AliyunSmsNotifier(name={self.name!r}, endpoint={self.endpoint!r}, templates={sorted(self.templates)})"

    # -- helpers --------------------------------------------------------------------------------------------------
    @staticmethod
    def _template_param(params: Mapping[str, Any]) -> str | None:
        if not params:
            return None
        return json.dumps({str(k): v if isinstance(v, str) else str(v) for k, v in params.items()},
                          ensure_ascii=False, separators=(",", ":"))

    def _local_refusal(self, message: Message, why: str) -> DeliveryResult:
        log.warning("sms_aliyun: message %s not sent: %s", message.id, why)
        return DeliveryResult(status=REJECTED, detail=f"not sent: {why}")

    def _vendor_result(self, message: Message, code: str, vendor_message: str, request_id: str, http_status: int,
                       *, biz_id: str = "") -> DeliveryResult:
        status = classify(code, http_status)
        phone = mask_phone(message.recipient.strip())
        if status is SENT:
            log.info("sms_aliyun: message %s to %s accepted (BizId %s)", message.id, phone, biz_id)
            detail = "" if biz_id else f"accepted without a BizId (RequestId {request_id})"
            return DeliveryResult(status=SENT, vendor_code=code, vendor_message_id=biz_id, detail=detail)
        known = TEMPORARY_CODES.get(code) or PERMANENT_CODES.get(code) or "unrecognised code"
        http = f"HTTP {http_status}, " if http_status != 200 else ""
        said = " ".join((vendor_message or "-").split())  # one line (SignatureDoesNotMatch quotes a string to sign)
        detail = f"{code}: {said} ({known}; {http}RequestId {request_id or '-'})"
        level = logging.ERROR if code in OPERATOR_CODES else logging.WARNING
        log.log(level, "sms_aliyun: message %s to %s %s: %s", message.id, phone, status.value, detail)
        return DeliveryResult(status=status, vendor_code=code, detail=detail)

    def _transport_failure(self, message: Message, error: BaseException) -> DeliveryResult:
        # requests' messages quote the URL, whose query string holds the phone number and the parameters
        text = _QUERY.sub("?<query hidden>", str(getattr(error, "message", None) or error))
        if "Read timed out" in text or "ReadTimeout" in text:
            detail = (f"no answer from {self.endpoint} in time: the outcome is unknown, the SMS may have been sent "
                      f"({text})")
        else:
            detail = f"could not reach {self.endpoint}: {type(error).__name__}: {text}"
        log.warning("sms_aliyun: message %s failed: %s", message.id, detail)
        return DeliveryResult(status=FAILED, detail=detail)


def _detail_result(message: Message, dto: Any) -> DeliveryResult:
    status = int(dto.send_status or 0)
    phone = mask_phone(message.recipient.strip())
    if status == 2:
        code = dto.err_code or ""
        log.warning("sms_aliyun: message %s to %s was accepted but not delivered (%s)", message.id, phone, code)
        return DeliveryResult(status=REJECTED, vendor_code=code,
                              detail=f"Aliyun accepted it but could not deliver it: {code or '-'}")
    log.info("sms_aliyun: message %s to %s found at Aliyun (SendStatus %s)", message.id, phone, status)
    return DeliveryResult(status=SENT, vendor_code="OK",
                          detail=f"found by OutId via QuerySendDetails (SendStatus {status}, SendDate "
                                 f"{dto.send_date or '-'})")


def _vendor_message(e: ResponseException) -> str:
    data = e.data if isinstance(getattr(e, "data", None), dict) else {}
    return str(data.get("Message") or data.get("message") or "")


def _request_id(e: ResponseException) -> str:
    data = e.data if isinstance(getattr(e, "data", None), dict) else {}
    return str(getattr(e, "request_id", None) or data.get("RequestId") or "")
