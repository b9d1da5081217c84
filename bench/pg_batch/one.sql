\set m random(1, 200)
WITH k AS (SELECT 'T'||nextval('s') AS t, 'o' || :m AS o),
i AS (INSERT INTO inbox (event_type, transaction_id, refund_id, notification_id, openid, resource, status, note, received_at) SELECT 'MALL_TRANSACTION.SUCCESS', k.t, '', 'n'||k.t, k.o, repeat('r', 400), 'applied', '', 1 FROM k ON CONFLICT (event_type, transaction_id, refund_id) DO NOTHING RETURNING id),
m AS (INSERT INTO members (openid, authorized, auth_type, code, balance, updated_at) SELECT k.o, NULL::BIGINT, '', '', 5, 1 FROM k WHERE EXISTS (SELECT 1 FROM i) ON CONFLICT (openid) DO UPDATE SET balance = excluded.balance, updated_at = excluded.updated_at),
l AS (INSERT INTO ledger (openid, kind, transaction_id, refund_id, points, balance_after, day, rule, created_at) SELECT k.o, 'credit', k.t, '', 5, 5, 20261207, 'rule', 1 FROM k WHERE EXISTS (SELECT 1 FROM i)),
p AS (INSERT INTO payments (transaction_id, openid, appid, mchid, shop_number, amount, credited_points, refunded_amount, entitled_debit, not_credited, created_at) SELECT k.t, k.o, 'a', 'm', 's', 100, 5, 0, 0, 0, 1 FROM k WHERE EXISTS (SELECT 1 FROM i)),
o AS (INSERT INTO outbox (transaction_id, method, path, payload, state, last_error, due_at, created_at) SELECT k.t, 'POST', '/v3/x', repeat('p', 300), 'pending', NULL, 1, 1 FROM k WHERE EXISTS (SELECT 1 FROM i) RETURNING id, state)
SELECT EXISTS (SELECT 1 FROM i), (SELECT id FROM o WHERE state = 'inflight');
