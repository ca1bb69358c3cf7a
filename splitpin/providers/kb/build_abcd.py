"""Build `splitpin/providers/kb/abcd.jsonl`, the knowledge base of the ABCD (online store) tenant.

Why this exists: the local model fleet answers shop customers by retrieving one article per
ABCD subflow and citing it as `InternalDoc-N`. ABCD ships agent guidelines (button-by-button
instructions for its annotation tool), not customer-facing articles, so this script pairs every
subflow in `guidelines.json` with a short customer-facing summary written for splitpin from that
subflow's guideline steps (condensed and rephrased, see `COPY`), and derives the internal notes
(the agent's action sequence and what identity data it asks for) from the guideline actions
themselves. It fails loudly if the guidelines and `COPY` drift apart, or if an answer breaks the
article format (2-4 sentences, 40-90 words, no sentence shared with another answer).

The output is deterministic and committed to the tree, so nothing at run or test time needs
`../shared/data`. Re-run it after editing `COPY`:

    .venv/bin/python splitpin/providers/kb/build_abcd.py [GUIDELINES_JSON] [--out PATH]

GUIDELINES_JSON defaults to `../shared/data/abcd/guidelines.json` (relative to the repo root).
ABCD is MIT-licensed (Chen et al. 2021, asappresearch/abcd); see `LICENSES.md` next to this file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import NamedTuple, TypedDict

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
DEFAULT_GUIDELINES = REPO_ROOT.parent / "shared" / "data" / "abcd" / "guidelines.json"
DEFAULT_OUT = HERE / "abcd.jsonl"
FIRST_DOC_NUMBER = 201

# Guideline buttons that look up who the customer is; their subtext lists the data asked for.
IDENTITY_BUTTONS = ("Verify Identity", "Validate Purchase")
# Items some guidelines list for identity checks that an agent must never ask a customer for.
NEVER_ASK = frozenset({"Password"})
NOT_STEPS = frozenset({"N/A", "End Conversation"})
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
N_OF_M = re.compile(r"\b(\d+) out of (\d+)\b")

# Subflows about identity / account access, or about charges and services the customer did not
# authorise (the ABCD counterparts of banking77's *_not_recognised intents). Profile edits that
# merely require an identity check (Manage Account / Manage Change *) are not included, matching
# banking77's edit_personal_details, which is not a compliance intent either.
COMPLIANCE: frozenset[tuple[str, str]] = frozenset(
    {
        ("Account Access", "Recover Username"),
        ("Account Access", "Recover Password"),
        ("Account Access", "Reset Two-Factor Auth"),
        ("Manage Account", "Status Service Added"),
        ("Purchase Dispute", "Mistimed Billing Never Bought"),
    }
)


class Action(TypedDict):
    type: str
    button: str
    text: str
    subtext: list[str]


class Subflow(TypedDict):
    actions: list[Action]
    instructions: list[str]


class Flow(TypedDict):
    description: str
    subflows: dict[str, Subflow]


class Copy(NamedTuple):
    """Hand-written, customer-facing text for one subflow (rephrased from its guidelines)."""

    title: str
    answer: str
    note: str


def _c(title: str, answer: str, note: str) -> Copy:
    return Copy(title, " ".join(answer.split()), note)


COPY: dict[tuple[str, str], Copy] = {
    # --- Product Defect -------------------------------------------------------------------
    ("Product Defect", "Initiate Refund"): _c(
        "How do I start a refund for an item?",
        """To start a refund, we look up your account with your full name or account ID and
        confirm the purchase with your username, email address and order ID. You then choose how
        to be paid back: a gift card or paper check mailed to your address, store credit added to
        your account, or money returned to the credit card on file. Tell us the amount you paid so
        we can issue the refund straight away.""",
        "If the customer does not know the amount, refund the default $50.",
    ),
    ("Product Defect", "Update Refund"): _c(
        "Can I add another item to my existing refund?",
        """If you already have a refund open and want to include another item, we first confirm
        the original purchase with your username, email address and order ID. Tell us the brand
        and type of the extra item, such as Nike shoes or Old Navy socks, along with its price. We
        then raise your refund to cover both, so an earlier $100 refund plus a $30 item becomes
        $130.""",
        "New refund total = previous refund amount + price of the added item.",
    ),
    ("Product Defect", "Refund Status"): _c(
        "What is the status of my refund?",
        """To check on a refund, we locate the order using your username, then your email address
        and finally your order ID. We will tell you whether the refund has not started, is in
        progress or is complete, and whether it was requested online, by phone or by chat. If you
        are unhappy with the progress, we can escalate it to a manager or change the refund
        method.""",
        "Status complaints go to the manager; method changes are made as an order update.",
    ),
    ("Product Defect", "Return Due to Stain"): _c(
        "Can I return an item that arrived stained?",
        """Sorry your item arrived with a stain. After confirming the order with your username,
        email and order ID, we check your membership: Gold members can always return, Silver
        within 6 months, Bronze within 90 days and Guests within 30 days, and a receipt also
        qualifies you. We then take your full street address to create a return label you can
        print, and you can send the item back by mail, in store or at a drop-off center.""",
        "Silver and Bronze members also qualify if the item is in its original packaging.",
    ),
    ("Product Defect", "Return Due to Color"): _c(
        "Can I return something because the color isn't what I expected?",
        """If the color isn't what you expected, you can usually send the item back. Eligibility
        depends on membership: unlimited returns for Gold, while Silver and Bronze members can
        return within 6 months or 90 days of purchase, or with a receipt or the original
        packaging, and Guests have 30 days or need a receipt. Once approved, give us your street,
        city, state and zip code for the printable label, and pick mail, store or drop-off
        center.""",
        "If the customer is not eligible, apologise, explain the rule and end the conversation.",
    ),
    ("Product Defect", "Return Due to Size"): _c(
        "How do I return clothes that don't fit?",
        """Items that don't fit can be returned once we have verified the purchase with your
        username, email address and order ID. Tell us your membership tier and purchase date: Gold
        has no time limit, Silver allows six months, Bronze 90 days and Guest 30 days, and having
        the receipt also works. We need your home address to generate the label you print, then
        you can ship the item, bring it to a store or leave it at a drop-off center.""",
        "The address is needed because the customer prints the return shipping label.",
    ),
    # --- Order Issue ----------------------------------------------------------------------
    ("Order Issue", "Status Mystery Fee"): _c(
        "Why is there an unexpected fee on my order?",
        """If you spot an extra charge on your order, we look it up using your full name, account
        ID and order ID and check whether the fee was our mistake. When it was our error, or you
        are a Gold or Silver member, we remove the fee and credit back the amount you were
        overcharged. Unfortunately, for Bronze and Guest accounts a fee that was charged correctly
        has to stay.""",
        "If the fee stays, apologise and explain a likely reason such as a price surge.",
    ),
    ("Order Issue", "Status Delivery Time"): _c(
        "Can I change my delivery from morning to evening?",
        """If your delivery is booked for the wrong time of day, for example the morning when you
        wanted the evening, we can look into it once we have your full name, account ID and order
        ID. We first check whether the delivery slot was set incorrectly on our side, then confirm
        where the order is in shipping. Where possible we move the order to the delivery time you
        want, and if it can't be changed we will explain why.""",
        "If the customer only wants to confirm a date, use Shipping Issue / Shipping Status.",
    ),
    ("Order Issue", "Status Payment Method"): _c(
        "Can I change the payment method on an order I placed?",
        """You can switch the payment on an order to a credit card, debit card or PayPal. After
        verifying your name, account ID and order ID, we check the shipping status: if the order
        is still at 'Order Received' or 'In Transit', the change applies right away. Once it is
        'Out for Delivery' or 'Delivered', the new payment method is saved for your future orders
        instead.""",
        "Only credit card, debit card and PayPal are valid payment methods.",
    ),
    ("Order Issue", "Status Quantity"): _c(
        "Why does my order confirmation show the wrong quantity?",
        """If your confirmation email shows more items than you meant to buy, we check the order
        with your full name, account ID and order ID. Sometimes the email itself is wrong and you
        were only charged for one item. If the extra item really was added, we remove it and
        refund its price when the order hasn't shipped, and if it's already on its way, call us
        back after it arrives to return it.""",
        "If the email was wrong, reassure the customer and end without a refund.",
    ),
    ("Order Issue", "Manage Upgrade"): _c(
        "Can I upgrade my order to overnight shipping?",
        """We can upgrade an order to overnight delivery as long as it still shows 'Order
        Received' and hasn't left our warehouse. Gold members get the upgrade fee waived, while
        Silver, Bronze and Guest members pay $20 on the credit card saved to the account. If the
        item is already in transit or out for delivery, the date can't be changed, but it will
        most likely reach you within a day anyway.""",
        "If the date cannot change, mark the conversation complete but not successful.",
    ),
    ("Order Issue", "Manage Downgrade"): _c(
        "Can I switch my order to slower, cheaper delivery?",
        """If you would rather have your order arrive next week to save on shipping, we can delay
        the delivery date as long as the item hasn't shipped yet. When it has already left, Gold,
        Silver and Bronze members receive the shipping fee as credit on their account instead.
        Unfortunately Guest accounts cannot get a credit once the package is on its way.""",
        "A customer asking for a shipping refund rather than a delay belongs in Shipping Cost.",
    ),
    ("Order Issue", "Manage Create"): _c(
        "Can I add an item to an order I already placed?",
        """Want to add something to an existing order? We verify it with your full name, account
        ID and order ID, and if the order is still at 'Order Received' we simply add the new item,
        such as a Calvin Klein shirt. If the order has already shipped, Gold and Silver members
        can have the new item sent separately as soon as possible with no shipping fee.""",
        "If the item cannot be added, apologise and mark the conversation not successful.",
    ),
    ("Order Issue", "Manage Cancel"): _c(
        "I ordered two of the same item by accident. Can I cancel one?",
        """If you ordered two of something by accident, give us your full name, account ID and
        order ID and tell us which item to drop. When the order hasn't shipped, we remove the
        extra item and refund its cost immediately. If it is already on its way, Bronze, Silver
        and Gold members get the refund now and call back for a return label after delivery,
        while Guests wait until it arrives to start a return.""",
        "Guests get no refund until the return process has started.",
    ),
    # --- Account Access -------------------------------------------------------------------
    ("Account Access", "Recover Username"): _c(
        "I forgot my username. How can I recover it?",
        """To recover your username, give us your full name or account ID and then confirm three of
        these four details: your full name, zip code, phone number and email address. Once your
        identity is confirmed, we tell you the username registered on your account. It only takes
        a minute and is often done alongside another request.""",
        "The username is first initial + last name + 1 (John Smith -> jsmith1).",
    ),
    ("Account Access", "Recover Password"): _c(
        "I forgot my password. Can you tell me what it is?",
        """For security we can't look up or read out your existing password, but we can generate a
        new one for you. We need your full name or account ID and your username, which we can
        recover first if you've forgotten it. You then confirm your identity with your PIN or the
        answer to your security question, and we share the new password with you.""",
        "Never disclose an existing password; only issue a newly generated one.",
    ),
    ("Account Access", "Reset Two-Factor Auth"): _c(
        "How do I reset two-factor authentication on my account?",
        """To reset two-factor authentication, we send a reset code to the email address on your
        account. Give us your name or account ID and that email address, or if you can't remember
        it, confirm your identity with your PIN or your security question about your mother's
        maiden name. We also send you a link explaining security best practices to keep your
        account safe.""",
        "Without the email address, send the code to the address already on file.",
    ),
    # --- Troubleshoot Site ----------------------------------------------------------------
    ("Troubleshoot Site", "Invalid Credit Card"): _c(
        "Why does the site keep rejecting my credit card?",
        """If checkout keeps saying your credit card is invalid, first re-enter the card details
        carefully, then try logging out and back in. Check the expiration date too, since an
        expired card will always be declined. If it still fails, we can place the order for you
        over chat using your card number and expiry date.""",
        "Give the steps in your own words; if nothing works, apologise and end the chat.",
    ),
    ("Troubleshoot Site", "Cart Not Updating"): _c(
        "Why won't items stay in my shopping cart?",
        """When items won't go into your shopping cart, refresh the page and add the item again, or
        sign out of your account and sign back in. Also look at the bottom left of the product
        page to see whether it is marked out of stock, because unavailable items can't be added.
        If none of that works, we can complete the purchase for you with your credit card number
        and expiration date.""",
        "Out-of-stock status is shown at the bottom left of the product page.",
    ),
    ("Troubleshoot Site", "Search Not Working"): _c(
        "Why does the site search say 'No results found'?",
        """If every search returns 'No results found', sign out and back in, and clear your
        browser's cookies from its settings menu. Try searching for a different product, such as
        a Prada handbag, and then search for your original item again. We also report the fault
        to our website team, and if you're still stuck we can place the order on your behalf.""",
        "Report persistent search faults to the website team.",
    ),
    ("Troubleshoot Site", "Website Too Slow"): _c(
        "Why is the website so slow?",
        """If our site is crawling, check whether other websites are slow too, because that points
        to your internet connection rather than our store. Closing other browser tabs and programs
        running in the background often speeds things up, and logging out and in again can help.
        We pass a report to our website team, and we can take your order in chat if the site
        stays unusable.""",
        "If every website is slow, the problem is the customer's connection, not ours.",
    ),
    # --- Manage Account -------------------------------------------------------------------
    ("Manage Account", "Status Service Added"): _c(
        "Why was a service I didn't ask for added to my account?",
        """If you think a service was added to your account without your permission, tell us your
        full name or account ID and how you found out, whether by email, from your spouse or in
        the news. We check our records, and if the service really was added in error we remove it
        and refund $40. Emails about this that don't come from our official marketing team are
        scams and can be ignored.""",
        "Treat emails not sent by the official marketing team as phishing.",
    ),
    ("Manage Account", "Status Service Removed"): _c(
        "An important service disappeared from my plan. Can you restore it?",
        """Worried that an important service has vanished from your plan? Let us know how you
        heard about it, whether by email, from your spouse or in the news, and we check your
        account. If it was removed by mistake, we reinstate it right away, although it may take a
        few minutes to show as active. If it was never removed, nothing has changed and there are
        no extra charges.""",
        "Confirm the reinstated service is visible before ending the conversation.",
    ),
    ("Manage Account", "Status Shipping Question"): _c(
        "Does my account include free international shipping?",
        """If you want to know whether your account gives you free shipping to or from another
        country, we look it up by your full name or account ID and check its benefits. We tell you
        whether international shipping is covered for you and send a link to the subscription FAQ
        page with the full details.""",
        "The guideline gives www.AcmeBrands.com/faq/subscription as the (fictional) FAQ link.",
    ),
    ("Manage Account", "Status Credit Missing"): _c(
        "Some credit is missing from my account. Where did it go?",
        """If store credit from a subscription refund, an earlier purchase or a promotional package
        has disappeared, let us know where it came from and we'll check. When the credit is
        actually still there, logging out and back in usually makes it show up. If it really is
        missing, we send you a promo code for the amount, which is $40 unless you know the exact
        figure.""",
        "Standard credit is $40 when the customer does not know the amount.",
    ),
    ("Manage Account", "Manage Change Address"): _c(
        "How do I change the address on my account?",
        """To update your address, first tell us the street address currently on the account, such
        as 7221 Florshim Drive. Then confirm your identity with any three of these: zip code, phone
        number, PIN, username, email address or the order ID of a previous purchase. Finally, give
        us the new street address and we will update your account.""",
        "The guideline also lists the password as an identity item; never ask for it.",
    ),
    ("Manage Account", "Manage Change Name"): _c(
        "How do I change the name on my account?",
        """To change the name on your account, give us the current first and last name exactly as
        registered. We then verify it's you with three details, for example your zip code, phone
        number, PIN, username, email address or a previous order ID. Tell us the new name you want
        and we'll save it, and it takes effect immediately.""",
        "The guideline also lists the password as an identity item; never ask for it.",
    ),
    ("Manage Account", "Manage Change Phone"): _c(
        "How do I update the phone number on my account?",
        """To update your phone number, tell us the number currently on your account in the format
        (555) 555-0100. After confirming your identity with three account details such as your zip
        code, PIN or a previous order ID, give us the new number in the same format. Your profile
        is updated as soon as we enter it.""",
        "The guideline also lists the password as an identity item; never ask for it.",
    ),
    ("Manage Account", "Manage Payment Method"): _c(
        "How do I change the saved payment method on my account?",
        """Your account's saved payment method can be a credit card, debit card or PayPal. Tell us
        which one you use now, confirm your identity with three account details like your email
        address, username or zip code, and then choose the new method. The change is applied to
        your account straight away.""",
        "The guideline also lists the password as an identity item; never ask for it.",
    ),
    # --- Purchase Dispute -----------------------------------------------------------------
    ("Purchase Dispute", "Bad Price Competitor"): _c(
        "Another store sells this item for less. Can you match the price?",
        """If you found the same item cheaper at a competitor, we look at your order using your full
        name, account ID and order ID. Our prices are set by a pricing system that adjusts them
        automatically, so they sometimes differ from other retailers, and this is outside our
        control. If you're still unhappy, we can give you a promo code for a discount on your next
        purchase.""",
        "Offer the promo code only if the customer keeps pushing.",
    ),
    ("Purchase Dispute", "Bad Price Yesterday"): _c(
        "Why did I pay more than yesterday's price?",
        """If an item cost less yesterday than when you bought it, that can be frustrating. Our
        prices change dynamically throughout the day, so a higher price on the day you ordered
        isn't an error and past orders can't be repriced. We still check your order with your
        name, account ID and order ID, and can offer a discount code for a future purchase if it
        helps.""",
        "Offer the promo code only if the customer keeps pushing.",
    ),
    ("Purchase Dispute", "Out-of-Stock General"): _c(
        "Why are so many items out of stock?",
        """We're sorry that many of the products you wanted are out of stock. We pass your feedback
        to our purchasing department so they can keep popular items on the shelves. If you're
        still disappointed, we can offer you a promo code as a discount toward your next order,
        and we'll let you know what we did in the chat.""",
        "Notify the purchasing department for every out-of-stock complaint.",
    ),
    ("Purchase Dispute", "Out-of-Stock One Item"): _c(
        "The item I want is out of stock. Can I still get it?",
        """If one particular item is out of stock, tell us its brand and type, for example a Gap
        sweater, and we report the shortage to our purchasing department. We can also back-order
        it for you on the card you have on file, so it ships automatically the moment it becomes
        available again.""",
        "Confirm the card on file before placing a back-order.",
    ),
    ("Purchase Dispute", "Promo Code Invalid"): _c(
        "Why is my promo code showing as invalid?",
        """If your promo code is rejected as invalid, we first check our system to see whether the
        code should have worked. If it was our mistake, or you are a Gold, Silver or Bronze
        member, we issue you a new code worth 20% off your next purchase. Unfortunately we can't
        replace codes for Guest accounts.""",
        "Codes older than 7 days belong to Promo Code Out of Date instead.",
    ),
    ("Purchase Dispute", "Promo Code Out of Date"): _c(
        "My promo code has expired. Can I get a new one?",
        """Our promotions last 7 days from when the code is issued, so a code older than that shows
        as out of date. Tell us about the code and we'll see whether it expired early by mistake,
        and members at Bronze level or above get a fresh 20% discount code either way. Guest
        shoppers, however, can't receive a replacement.""",
        "Codes issued within the last 7 days belong to Promo Code Invalid instead.",
    ),
    ("Purchase Dispute", "Mistimed Billing Already Returned"): _c(
        "I returned my item but haven't received my credit yet.",
        """If you've sent an item back but the credit hasn't shown on your bill, we confirm the
        order with your username, email address and order ID and ask how many days you've waited.
        Credits normally appear within 7 days, so once that has passed we start processing yours
        right away. Before 7 days are up, we can only push it through early for Gold members.""",
        "A customer who wants a new refund belongs in Product Defect / Initiate Refund.",
    ),
    ("Purchase Dispute", "Mistimed Billing Never Bought"): _c(
        "I was billed for something I never bought.",
        """If your bill shows a charge for something you never ordered, we check the order using
        your username, email address and order ID and review whether the charge is our error. When
        it is, we credit your account. If our records show the purchase as valid, we can still
        issue the credit for Gold members, but other accounts keep the charge.""",
        "Treat unexplained charges as possible account misuse until the order is validated.",
    ),
    # --- Shipping Issue -------------------------------------------------------------------
    ("Shipping Issue", "Shipping Status"): _c(
        "I got a shipping email that looks wrong. Is my order okay?",
        """If a shipping notification made you think something went wrong with your order, ask us
        your question and we check the shipment after confirming your account and order details.
        If everything is on track, we confirm the email was mistaken. If there's a real problem,
        we fix it by changing the delivery date, address, item or price as needed.""",
        "Answer the customer's yes/no question in plain language.",
    ),
    ("Shipping Issue", "Manage Shipping"): _c(
        "Can I change the shipping address or the item on my order?",
        """Need to ship to a different address, or swap an item you ordered by mistake? Tell us the
        current shipping status and confirm the purchase with your username, email address and
        order ID. We then update the order with the new address or the corrected item, and a
        notification in the chat confirms the change.""",
        "Customers cancelling because shipping is too expensive belong in Shipping Cost.",
    ),
    ("Shipping Issue", "Missing Item"): _c(
        "My order never arrived. What happened to it?",
        """If your order hasn't arrived, tell us how many days you have been waiting. Within the
        first week, a package is sometimes marked delivered early and still turns up a couple of
        days later. After a week or more, we ship a replacement to your full address, so let us
        know the brand and type of the product, for example Guess jeans.""",
        "Reship only after 7 or more days of waiting.",
    ),
    ("Shipping Issue", "Shipping Cost"): _c(
        "Can you waive or refund my shipping fee?",
        """If the shipping fee feels too high, tell us where your package is in the delivery
        process. While it still shows 'Order Received' or 'In Transit', we can waive the fee
        entirely. Once it's out for delivery or has been delivered, we refund $8, the cost of
        standard shipping, instead.""",
        "A customer who wants a later delivery instead of a refund belongs in Manage Downgrade.",
    ),
    # --- Subscription Inquiry -------------------------------------------------------------
    ("Subscription Inquiry", "Status Active"): _c(
        "Is my premium subscription still active?",
        """Wondering whether your last payment went through? Once we've verified your name, account
        ID and order ID, we check your premium subscription and tell you whether it is active or
        cancelled, along with any amount still due. We also send you an account login link so you
        can check the status yourself, and you can pay an outstanding balance right in the
        chat.""",
        "Adjust implausible status results (such as $0 due today) so the story is consistent.",
    ),
    ("Subscription Inquiry", "Status Due Amount"): _c(
        "How much do I owe on my subscription?",
        """To find out how much is due on your premium subscription, give us your full name,
        account ID and order ID. We tell you the amount outstanding and the date it is due, and
        send a sign-in link so you can see your bill whenever you like. If you want to settle it
        now, just tell us how much to pay.""",
        "Make sure the customer knows their username before sending the login link.",
    ),
    ("Subscription Inquiry", "Status Due Date"): _c(
        "When does my subscription renew?",
        """Your subscription renews every month, and we can tell you the exact renewal date once we
        have checked your name, account ID and order ID. We also let you know if anything is
        overdue, and share a login link along with your username so you can look up future due
        dates in your account.""",
        "Offer to take payment if the subscription is past due.",
    ),
    ("Subscription Inquiry", "Manage Pay Bill"): _c(
        "How do I pay or renew my subscription?",
        """The standard premium subscription costs $99 a year, and you can pay all or part of it
        with us in chat. If you're not sure what you owe, we look up the current amount due. You
        can give us a credit card number, or we charge the card already on your account, and then
        we renew your subscription.""",
        "If the amount due shows $0, use the standard $99 instead.",
    ),
    ("Subscription Inquiry", "Manage Extension"): _c(
        "Can I get more time to pay for my subscription?",
        """Whether we can extend your subscription payment depends on membership: Gold members can
        always get an extension, and Silver members can if they are only one day late. Bronze and
        Guest members unfortunately aren't eligible. If you don't qualify, give us a phone number
        and a manager will call you back to discuss it.""",
        "Escalations without an extension go to the manager with a callback number.",
    ),
    ("Subscription Inquiry", "Manage Dispute Bill"): _c(
        "I think I was billed twice for my subscription.",
        """If your subscription bill looks wrong, such as being charged twice, we compare what you
        were billed with what you should have paid. Gold members always get the difference back,
        Silver members get a refund when the error is under $10, and Bronze or Guest accounts are
        refunded when our system confirms the mistake. If you haven't paid the bill yet, no refund
        is needed and we simply correct the misunderstanding.""",
        "Refund only the overcharged difference (billed $60 for $50 owed -> refund $10).",
    ),
    # --- Single-Item Query ----------------------------------------------------------------
    ("Single-Item Query", "Boots FAQ"): _c(
        "Are the boots waterproof, and how do they fit?",
        """We can answer common questions about our boots, such as how to remove paint or chewing
        gum, how wide the fit is and how long they take to break in. We can also tell you whether
        they are waterproof, what color the laces are, whether your size is in stock and what
        warranty comes with them.""",
        "Explain the FAQ answer in your own words; the system answer is incomplete.",
    ),
    ("Single-Item Query", "Shirt FAQ"): _c(
        "How do I wash the shirt, and will it shrink?",
        """Our shirt answers cover how to wash it, how to get out a stain, and whether it shrinks in
        the wash. We can also give you the arm length and collar width, tell you what material
        it's made of, check stock in small, medium and large, and confirm whether buttons come in
        brown or black.""",
        "Explain the FAQ answer in your own words; the system answer is incomplete.",
    ),
    ("Single-Item Query", "Jeans FAQ"): _c(
        "How long are the jeans, and can they be tailored?",
        """For jeans, we can explain how to remove grass stains, how often to wash them and whether
        they shrink after washing. Ask us about the leg length, the cost of tailoring, whether
        they come in dark blue or black, in larger or smaller sizes, and in styles with ripped
        holes.""",
        "Explain the FAQ answer in your own words; the system answer is incomplete.",
    ),
    ("Single-Item Query", "Jacket FAQ"): _c(
        "Is the jacket warm enough, and can it be machine washed?",
        """Our jacket answers include removing a wine stain, whether it's machine washable or
        dry-clean only, and whether it shrinks. We can also tell you the sleeve length, how to
        detach the hood, what it is made of, whether it's in stock and if it's warm enough for
        cold weather.""",
        "Explain the FAQ answer in your own words; the system answer is incomplete.",
    ),
    # --- Storewide Query ------------------------------------------------------------------
    ("Storewide Query", "Pricing FAQ"): _c(
        "How much do gift wrapping, name stitching and overnight shipping cost?",
        """Ask us about our extra services and we'll give you current prices for gift wrapping,
        stitching your name onto a garment, and overnight shipping. We can also check whether the
        items in your shopping cart add up to enough to qualify for free shipping, and explain
        anything the automated answer leaves out.""",
        "Explain the FAQ answer in your own words; do not copy and paste it.",
    ),
    ("Storewide Query", "Membership FAQ"): _c(
        "What membership levels do you offer, and what are the benefits?",
        """Our membership levels are Guest, Bronze, Silver and Gold, and higher levels get more
        generous returns, refunds and shipping perks. We can explain how to qualify for premium
        membership, list the benefits you get at each level and tell you how long a membership
        lasts before it needs renewing.""",
        "Explain the FAQ answer in your own words; do not copy and paste it.",
    ),
    ("Storewide Query", "Timing FAQ"): _c(
        "When does the spring collection launch and when is the annual sale?",
        """We can tell you when the spring collection drops, when the annual sale begins and what
        time your local store opens. We can also remind you when promo codes expire, which is
        generally seven days after they are issued, so you can plan your shopping around it.""",
        "Explain the FAQ answer in your own words; do not copy and paste it.",
    ),
    ("Storewide Query", "Policy FAQ"): _c(
        "What are your refund, return and subscription policies?",
        """We can walk you through our policies on canceling a subscription, what happens if you are
        late on a subscription payment, and how refunds work. For returns, the window depends on
        your membership level, from 30 days for Guests up to unlimited returns for Gold
        members.""",
        "Explain the FAQ answer in your own words; do not copy and paste it.",
    ),
}


def load_guidelines(path: Path) -> dict[str, Flow]:
    data: dict[str, Flow] = json.loads(path.read_text(encoding="utf-8"))
    return data


def steps_note(actions: list[Action]) -> str:
    """The agent's action buttons in guideline order, e.g. 'Pull up Account > Verify Identity'.

    'N/A' (plain communication) and 'End Conversation' (the early exit when a request is refused)
    are not steps of the happy path, so they are left out.
    """
    buttons: list[str] = []
    for action in actions:
        button = action["button"].strip()
        if button and button not in NOT_STEPS and button not in buttons:
            buttons.append(button)
    return "Agent steps: " + " > ".join(buttons) + "."


def _item(subtext: str) -> str | None:
    """'Full name - may have gotten this earlier' -> 'Full name'; instructions -> None."""
    if "[" in subtext:
        return None
    return subtext.split(" - ", 1)[0].strip()


def identity_note(actions: list[Action]) -> str | None:
    """What the guideline's identity/purchase lookups ask the customer for, if any."""
    parts: list[str] = []
    for action in actions:
        if action["button"] not in IDENTITY_BUTTONS:
            continue
        items = [i for i in (_item(s) for s in action["subtext"]) if i and i not in NEVER_ASK]
        m = N_OF_M.search(action["text"])
        quota = f"any {m.group(1)} of " if m else ""
        parts.append(f"{action['button']} ({quota}{', '.join(items)})")
    if not parts:
        return None
    return "Identity check: " + "; ".join(parts) + "."


def check_answer(key: tuple[str, str], answer: str) -> list[str]:
    sentences = SENTENCE_END.split(answer)
    words = len(answer.split())
    if not 2 <= len(sentences) <= 4:
        raise ValueError(f"{key}: {len(sentences)} sentences (want 2-4)")
    if not 40 <= words <= 90:
        raise ValueError(f"{key}: {words} words (want 40-90)")
    return sentences


def build(guidelines: dict[str, Flow]) -> list[dict[str, object]]:
    keys = [(flow, sub) for flow, spec in guidelines.items() for sub in spec["subflows"]]
    missing = [k for k in keys if k not in COPY]
    extra = [k for k in COPY if k not in set(keys)]
    if missing or extra:
        raise ValueError(f"guidelines and COPY differ: missing {missing}, extra {extra}")
    unknown = [k for k in COMPLIANCE if k not in COPY]
    if unknown:
        raise ValueError(f"COMPLIANCE names unknown subflows: {unknown}")

    seen: dict[str, str] = {}
    articles: list[dict[str, object]] = []
    for number, (flow, sub) in enumerate(keys, start=FIRST_DOC_NUMBER):
        doc_id = f"InternalDoc-{number}"
        copy = COPY[(flow, sub)]
        for sentence in check_answer((flow, sub), copy.answer):
            previous = seen.setdefault(sentence.lower(), doc_id)
            if previous != doc_id:
                raise ValueError(f"{doc_id} repeats a sentence of {previous}: {sentence!r}")
        actions = guidelines[flow]["subflows"][sub]["actions"]
        notes = [steps_note(actions)]
        ident = identity_note(actions)
        if ident:
            notes.append(ident)
        notes.append(copy.note)
        articles.append(
            {  # the KB file format of docs/knowledge_bases.md
                "id": doc_id,
                "title": copy.title,
                "text": copy.answer,
                "intent": f"{flow} / {sub}",
                "compliance": (flow, sub) in COMPLIANCE,
                "policy_notes": notes,
            }
        )
    return articles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("guidelines", nargs="?", type=Path, default=DEFAULT_GUIDELINES)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    guidelines_path: Path = args.guidelines
    out: Path = args.out
    if not guidelines_path.is_file():
        parser.error(f"guidelines not found: {guidelines_path}")
    articles = build(load_guidelines(guidelines_path))
    text = "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in articles)
    out.write_text(text, encoding="utf-8", newline="\n")
    print(f"wrote {len(articles)} articles to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
